"""Custom-task label checks: a typo, a rare class or an eval-only label stops with the file, line and values."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from sparta.errors import SpartaError
from sparta.tasks import get_task, load_splits


def jsonl(path: Path, labels: list) -> str:
    path.write_text(
        "".join(json.dumps({"text": f"example {i}", "label": y}) + "\n" for i, y in enumerate(labels))
    )
    return str(path)


def test_one_mistyped_label_among_ints_is_an_error_naming_file_line_and_value(tmp_path):
    labels = [i % 2 for i in range(200)]
    labels[56] = "entailmnet"  # line 57
    train = jsonl(tmp_path / "train.jsonl", labels)
    with pytest.raises(SpartaError) as err:
        get_task("custom", data_files={"train": train})
    message = str(err.value)
    assert message.startswith(
        f"{train}: line 57: label 'entailmnet' is not an integer, while the other 199 labels"
    )
    assert "(0, 1)" in message and "--labels" in message
    # naming the classes says the third one is meant
    task = get_task("custom", data_files={"train": train}, label_names=("0", "1", "entailmnet"))
    assert task.num_labels == 3
    assert [r["label"] for r in load_splits(task)["train"]].count(2) == 1


def test_mixed_labels_in_a_csv_name_every_odd_line(tmp_path):
    path = tmp_path / "train.csv"
    rows = [{"text": f"t{i}", "label": ("pos", "neg")[i % 2]} for i in range(40)]
    rows[3]["label"], rows[10]["label"] = "1", "0"  # CSV lines 5 and 12 (after the header)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(
        SpartaError,
        match=r"train.csv: lines 5, 12: labels '0', '1' are integers, while the other "
        r"38 labels are not \(neg, pos\)",
    ):
        get_task(str(path))


def test_a_rare_class_is_an_error_unless_allowed(tmp_path):
    labels = ["pos", "neg"] * 150
    labels[7] = "postive"
    train = jsonl(tmp_path / "train.jsonl", labels)
    with pytest.raises(
        SpartaError,
        match=r"train.jsonl: line 8: class 'postive' has 1 training row of 300; .*"
        r"--allow-rare-labels",
    ):
        get_task(train)
    assert get_task(train, allow_rare_labels=True).label_names == ("neg", "pos", "postive")


def test_the_rare_threshold_is_three_rows_and_half_a_percent(tmp_path):
    few = jsonl(tmp_path / "few.jsonl", [0] * 50 + [1] * 47 + [2] * 3)  # 3 rows = 3%: enough
    assert get_task(few).num_labels == 3
    share = jsonl(tmp_path / "share.jsonl", [0] * 500 + [1] * 496 + [2] * 4)  # 4 rows = 0.4% of 1000
    with pytest.raises(
        SpartaError, match=r"lines 997, 998, 999, 1000: class '2' has 4 training rows of 1000"
    ):
        get_task(share)
    gap = jsonl(tmp_path / "gap.jsonl", [0, 2] * 20)  # ints: class 1 exists by implication, with no row
    with pytest.raises(SpartaError, match=r"class '1' has no training rows of 40"):
        get_task(gap)


@pytest.mark.parametrize(
    ("train", "test", "bad"),
    [(["pos", "neg"] * 20, ["pos", "neutral", "neg"], "'neutral'"), ([0, 1] * 20, [1, 2, 0, 2], "'2'")],
    ids=["string", "int"],
)
def test_an_eval_label_absent_from_train_is_an_error(tmp_path, train, test, bad):
    files = {"train": jsonl(tmp_path / "train.jsonl", train), "test": jsonl(tmp_path / "test.jsonl", test)}
    lines = "line 2" if bad == "'neutral'" else "lines 2, 4"
    with pytest.raises(
        SpartaError, match=rf"test.jsonl: {lines}: label\(s\) {bad} never occur in the training"
    ):
        get_task("custom", data_files=files)
    assert get_task("custom", data_files=files, allow_rare_labels=True).num_labels == 3


def test_labels_name_the_ids_of_an_int_column(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [0, 1] * 10)
    task = get_task(train, label_names=("neg", "pos"))
    assert task.label_names == ("neg", "pos") and task.num_labels == 2
    assert [r["label"] for r in load_splits(task)["train"]][:4] == [0, 1, 0, 1]
    with pytest.raises(SpartaError, match="not ints 0..0"):
        get_task(train, label_names=("neg",), label_words=("No",))


def test_a_capped_eval_sample_without_a_class_only_warns(tmp_path, caplog):
    files = {
        "train": jsonl(tmp_path / "train.jsonl", [0, 1] * 50),
        "dev": jsonl(tmp_path / "dev.jsonl", [0] * 99 + [1]),
    }
    task = get_task("custom", data_files=files)
    with caplog.at_level(logging.WARNING, logger="sparta.tasks.labels"):
        splits = load_splits(task, max_eval_samples=3)
    assert {r["label"] for r in splits["dev"]} == {0}
    assert any(
        "dev split (a sample of 3: --max-eval-samples) has no example of class(es) 1" in m
        for m in caplog.messages
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparta.tasks.labels"):
        load_splits(task)  # the whole dev file has both classes
    assert not caplog.messages
