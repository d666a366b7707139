"""Custom tasks from CSV / TSV / JSONL(.gz) files, including the error cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sparta.errors import SpartaError
from sparta.tasks import compute_metrics, format_input, get_task, load_splits


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def reviews(n: int, labels=("good", "bad", "meh")) -> list[dict]:
    return [
        {"id": i, "review": f"review number {i}, with a comma", "stars": labels[i % len(labels)]}
        for i in range(n)
    ]


def test_string_labels_csv_and_jsonl(tmp_path):
    files = {
        "train": write_csv(tmp_path / "a.csv", reviews(50)),
        "test": write_jsonl(tmp_path / "b.jsonl", reviews(7)),
    }
    task = get_task("custom", data_files=files, text_fields=("review",), label_field="stars")
    assert task.label_names == task.label_words == ("bad", "good", "meh") and task.num_labels == 3
    assert task.instruction == "Classify the following text. Respond with bad, good or meh."
    s = load_splits(task)
    assert (len(s["train"]), len(s["dev"]), len(s["test"])) == (45, 5, 7)  # 10% of train carved as dev
    names = ("bad", "good", "meh")
    for rows in s.values():
        assert all(r["label"] == names.index(r["stars"]) for r in rows)
    assert not {r["id"] for r in s["dev"]} & {r["id"] for r in s["train"]}
    assert format_input(task, s["test"][0]) == "review number 0, with a comma"
    assert compute_metrics(task, [r["label"] for r in s["test"]], [r["label"] for r in s["test"]]) == {
        "accuracy": 1.0
    }


def test_int_labels_dev_file_and_label_order(tmp_path, write_jsonl_gz):
    rows = [{"text": f"t{i}", "label": str(i % 3)} for i in range(30)]
    dev = write_csv(tmp_path / "dev.tsv", rows[:4], delimiter="\t")
    train = str(
        write_jsonl_gz(
            tmp_path / "train.jsonl.gz", [{"text": r["text"], "label": int(r["label"])} for r in rows]
        )
    )
    task = get_task("custom", data_files={"train": train, "validation": dev})
    assert task.num_labels == 3 and task.label_names == ("0", "1", "2") and task.dev_splits == ("dev",)
    s = load_splits(task)
    assert (len(s["train"]), len(s["dev"]), s["test"]) == (30, 4, [])  # no test file: empty test split
    assert [r["label"] for r in s["dev"]] == [0, 1, 2, 0]
    assert get_task("custom", data_files={"train": train}, num_labels=5).num_labels == 5
    # string labels in a given order
    csv_path = write_csv(tmp_path / "s.csv", reviews(20, labels=("pos", "neg")))
    task = get_task(
        "custom",
        data_files={"train": csv_path},
        text_fields="review",
        label_field="stars",
        label_names=("neg", "pos"),
        label_words=("No", "Yes"),
    )
    assert task.label_words == ("No", "Yes") and task.text_fields == ("review",)
    assert all(r["label"] == int(r["stars"] == "pos") for r in load_splits(task)["train"])


def test_path_shortcut_and_dev_cap(tmp_path):
    path = write_csv(tmp_path / "big.csv", [{"text": f"x{i}", "label": i % 2} for i in range(12_000)])
    task = get_task(path)
    assert task.name == "custom" and task.dev_size == 1000
    s = load_splits(task, max_train_samples=100)
    assert len(s["dev"]) == 1000 and len(s["train"]) == 100


def test_errors(tmp_path):
    path = write_csv(tmp_path / "a.csv", reviews(10))
    with pytest.raises(
        SpartaError, match=r"a.csv: the columns 'id', 'review' and 'stars' fit no task format; .* --objective"
    ):
        get_task("custom", data_files={"train": path})
    with pytest.raises(
        SpartaError, match=r"a.csv: column 'text' not found; the columns are 'id', 'review', 'stars'"
    ):
        get_task("custom", data_files={"train": path}, objective="classification")
    with pytest.raises(SpartaError, match="column 'label' not found"):
        get_task("custom", data_files={"train": path}, text_fields=("review",))
    with pytest.raises(SpartaError, match="not among label_names"):
        get_task(
            "custom",
            data_files={"train": path},
            text_fields=("review",),
            label_field="stars",
            label_names=("good", "bad"),
        )
    with pytest.raises(SpartaError, match="num_labels=2 but"):
        get_task(
            "custom", data_files={"train": path}, text_fields=("review",), label_field="stars", num_labels=2
        )
    ints = write_jsonl(tmp_path / "i.jsonl", [{"text": "a", "label": k} for k in (0, 1, 2)])
    with pytest.raises(
        SpartaError,
        match=r"i.jsonl: column 'label' holds labels 2 \(1 row\) that are not ints 0..1 \(num_labels=2\); custom",
    ):
        get_task("custom", data_files={"train": ints}, num_labels=2)
    neg = write_jsonl(tmp_path / "n.jsonl", [{"text": "a", "label": k} for k in (-1, 1)])
    with pytest.raises(SpartaError, match="holds labels -1 .* without a label"):
        get_task(neg)
    with pytest.raises(SpartaError, match="data file not found: .*missing.csv"):
        get_task("custom", data_files={"train": str(tmp_path / "missing.csv")})
    with pytest.raises(SpartaError, match="'train' file and only the keys"):
        get_task("custom", data_files={"train": path, "extra": path})
    with pytest.raises(SpartaError, match="'train' file"):
        get_task("custom", data_files={"test": path})
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(SpartaError, match="holds no examples"):
        get_task(str(tmp_path / "empty.csv"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\nnot json\n')
    with pytest.raises(SpartaError, match=r"bad.jsonl:2: invalid JSON"):
        get_task(str(tmp_path / "bad.jsonl"))
    (tmp_path / "list.json").write_text('[{"text": "a", "label": 0}, {"text": "b", "label": 1}]')
    assert get_task(str(tmp_path / "list.json"), allow_rare_labels=True).num_labels == 2  # 1 row per class
    with pytest.raises(SpartaError, match="unsupported data file type"):
        (tmp_path / "a.txt").write_text("text,label\na,0\n")
        get_task("custom", data_files={"train": str(tmp_path / "a.txt")})


UNLABELLED_HINT = "-1, empty and null mark examples without a label (GLUE test splits use -1)"


@pytest.mark.parametrize(
    ("rows", "bad", "expected"),
    [
        ([("a", "0"), ("b", "1"), ("c", "-1"), ("d", "-1")], "-1 (2 rows)", "ints 0..1 (num_labels=2)"),
        ([("a", "pos"), ("b", "neg"), ("c", "-1")], "-1 (1 row)", "among the labels ['neg', 'pos']"),
        ([("a", "0"), ("b", "1"), ("c", "")], "'' (1 row)", "ints 0..1 (num_labels=2)"),
        ([("a", "pos"), ("b", "neg"), ("c", " ")], "' ' (1 row)", "among the labels ['neg', 'pos']"),
        ([("a", "-1"), ("b", "-1")], "-1 (2 rows)", "class labels"),
    ],
    ids=["int", "string", "empty-int", "empty-string", "only-unlabelled"],
)
def test_unlabelled_rows_in_a_csv_are_an_error_not_a_class(tmp_path, rows, bad, expected):
    path = write_csv(tmp_path / "train.csv", [{"text": t, "label": y} for t, y in rows])
    with pytest.raises(SpartaError) as err:
        get_task(path)
    message = str(err.value)
    assert message.startswith(f"{path}: column 'label' holds labels {bad} that are not {expected}; ")
    assert UNLABELLED_HINT in message and "drop those rows, or leave that file out" in message
    assert message.endswith(
        "custom task labels must be ints 0..c-1 for c classes, or strings (each distinct string is one class)"
    )


def test_unlabelled_test_file_and_missing_or_null_labels_name_their_file(tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": f"t{i}", "label": i % 3} for i in range(9)])
    test = write_csv(tmp_path / "test.csv", [{"text": "x", "label": -1}, {"text": "y", "label": 2}])
    with pytest.raises(
        SpartaError,
        match=r"test.csv: column 'label' holds labels -1 \(1 row\) that are not ints 0..2 \(num_labels=3\); -1, empty",
    ):
        get_task("custom", data_files={"train": train, "test": test})
    null = write_jsonl(
        tmp_path / "null.jsonl", [{"text": "a", "y": "pos"}, {"text": "b", "y": None}, {"text": "c"}]
    )
    with pytest.raises(
        SpartaError,
        match=r"null.jsonl: column 'y' holds labels null \(2 rows\) that are not among the labels \['pos'\]; -1",
    ):
        get_task("custom", data_files={"train": null}, label_field="y")
    # "-1" is a label like any other once label_names say so
    given = write_csv(
        tmp_path / "pm.csv", [{"text": f"t{i}", "label": ("-1", "1")[i % 2]} for i in range(20)]
    )
    task = get_task("custom", data_files={"train": given}, label_names=("-1", "1"))
    assert task.label_names == ("-1", "1")
    assert sorted({r["label"] for r in load_splits(task)["train"]}) == [0, 1]
    # string labels that are ints keep working as ids
    strs = write_jsonl(tmp_path / "s.jsonl", [{"text": f"t{i}", "label": str(i % 2)} for i in range(10)])
    assert get_task(strs).label_names == ("0", "1")
