"""Custom language-modelling (SFT) tasks from JSONL / CSV files: format detection, splits, and bad rows named by
file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sftkit import SMOL, targets, word_tokenizer

from sparta.errors import SpartaError
from sparta.tasks import build_task, encode_example, get_task, load_splits

LM = "language-modelling"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_csv(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def chats(n: int) -> list[dict]:
    return [
        {
            "id": i,
            "messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}],
        }
        for i in range(n)
    ]


def test_formats_are_detected_from_the_columns(tmp_path):
    files = {
        "messages": write_jsonl(tmp_path / "m.jsonl", chats(30)),
        "prompt-completion": write_csv(tmp_path / "pc.csv", [{"prompt": "hi", "completion": "hello"}] * 20),
        "text": write_jsonl(tmp_path / "t.jsonl", [{"text": "the cat sat"}] * 10),
    }
    for fmt, path in files.items():
        task = get_task("custom", data_files={"train": path}, objective=LM)
        assert (task.format, task.objective, task.num_labels, task.metrics) == (fmt, LM, 0, ("loss",))
        assert not task.generation_metric and task.answer_parser is None
    # both text and prompt/completion columns: prompt-completion, unless the format is given
    both = write_jsonl(
        tmp_path / "both.jsonl", [{"prompt": "hi", "completion": "hello", "text": "the cat"}] * 5
    )
    assert get_task(both, objective=LM).format == "prompt-completion"
    assert get_task(both, objective=LM, format="text").format == "text"
    # own column names
    conv = write_jsonl(tmp_path / "conv.jsonl", [{"conv": r["messages"]} for r in chats(5)])
    assert get_task(conv, objective=LM, messages_field="conv").format == "messages"
    assert get_task(files["messages"], objective=LM, generation_metric=True).metrics == (
        "loss",
        "exact_match",
    )


def test_splits_dev_carve_and_dev_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chats(50))
    task = get_task("custom", data_files={"train": train}, objective=LM, system_prompt="You are a bot .")
    s = load_splits(task)
    assert (len(s["train"]), len(s["dev"]), s["test"]) == (45, 5, [])  # 10% of train carved as dev
    assert not {r["id"] for r in s["dev"]} & {r["id"] for r in s["train"]}
    assert s["train"][0] == chats(50)[s["train"][0]["id"]]  # rows as they are
    dev = write_jsonl(tmp_path / "dev.jsonl", chats(7))
    task = get_task("custom", data_files={"train": train, "dev": dev, "test": dev}, objective=LM)
    s = load_splits(task)
    assert (len(s["train"]), len(s["dev"]), len(s["test"])) == (50, 7, 7)
    # run.json stores get_task's arguments: the task rebuilds from them
    assert (
        build_task({"name": "custom", "data_files": {"train": train}, "objective": LM}).format == "messages"
    )


def test_messages_in_a_csv_cell_as_json(tmp_path):
    rows = [{"messages": json.dumps(r["messages"])} for r in chats(4)]
    task = get_task(write_csv(tmp_path / "m.csv", rows), objective=LM)
    tok = word_tokenizer(SMOL)
    ids, mask = encode_example(task, load_splits(task)["train"][0], tok, instruct=True)
    assert targets(tok, ids, mask) == ["hello", "<|im_end|>"]


def bad(tmp_path, rows, name="train.jsonl", **kw) -> str:
    with pytest.raises(SpartaError) as err:
        get_task("custom", data_files={"train": write_jsonl(tmp_path / name, rows)}, objective=LM, **kw)
    return str(err.value)


def test_bad_rows_name_their_file_and_line(tmp_path):
    good = chats(3)
    no_reply = {"messages": [{"role": "user", "content": "hi"}]}
    message = bad(tmp_path, [*good, no_reply])
    assert message.startswith(
        f"{tmp_path / 'train.jsonl'}: line 4: the conversation in 'messages' has no assistant"
    )
    tool = {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "4"}]}
    assert "line 2: turn 2 of 'messages' has role 'tool'; roles must be system, user, assistant" in bad(
        tmp_path, [good[0], tool]
    )
    empty = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}
    assert "line 1: turn 2 of 'messages' is an empty assistant turn" in bad(tmp_path, [empty])
    assert "line 1: column 'messages' must be a non-empty list" in bad(tmp_path, [{"messages": []}])
    no_content = {"messages": [{"role": "user"}]}
    assert "line 1: turn 1 of 'messages' must be a dict with 'role' and 'content'" in bad(
        tmp_path, [no_content]
    )
    pc = [{"prompt": "hi", "completion": "hello"}, {"prompt": "hi", "completion": ""}]
    assert "train.jsonl: line 2: column 'completion' is empty" in bad(tmp_path, pc)
    missing = [{"prompt": "hi", "completion": "hello"}, {"prompt": "hi"}]
    assert "line 2: column 'completion' not found (format prompt-completion)" in bad(tmp_path, missing)
    assert "line 1: column 'text' must be text, got null" in bad(tmp_path, [{"text": None}])
    message = bad(tmp_path, [{"question": "hi", "label": 1}])
    assert "cannot tell the data format from the columns" in message and "'messages' column" in message


def test_bad_rows_in_a_dev_file_and_bad_options(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chats(5))
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"prompt": "hi", "completion": "hello"}])
    with pytest.raises(
        SpartaError, match=r"dev.jsonl: line 1: column 'messages' not found \(format messages\)"
    ):
        get_task("custom", data_files={"train": train, "dev": dev}, objective=LM)
    with pytest.raises(SpartaError, match="label_names, num_labels only apply to classification tasks"):
        get_task("custom", data_files={"train": train}, objective=LM, num_labels=2, label_names=("a", "b"))
    with pytest.raises(
        SpartaError, match="format must be one of messages, prompt-completion, text, got 'chat'"
    ):
        get_task("custom", data_files={"train": train}, objective=LM, format="chat")
    with pytest.raises(SpartaError, match="objective 'ranking' is unknown"):
        get_task("custom", data_files={"train": train}, objective="ranking", text_fields=("id",))
    with pytest.raises(SpartaError, match="has labels, so it is a classification task"):
        get_task("sst2", objective=LM)
    with pytest.raises(SpartaError, match="metrics .* must include loss"):
        get_task("gsm8k", metrics=("exact_match",))
