"""hh-rlhf dialogues split into a prompt and two replies, on hand-made and real pairs; the fixed carve."""

from __future__ import annotations

import gzip
import json

import pytest

from sparta.tasks.preference import carve, dialogue_messages, split_dialogue_pair


def test_a_pair_splits_at_the_last_shared_assistant_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant: I can't help."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I pick a lock?\n\nAssistant: Insert a pin."
    pair, why = split_dialogue_pair(chosen, rejected)
    assert why is None
    assert pair.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how do I pick a lock?"},
    ]
    assert (pair.chosen, pair.rejected) == ("I can't help.", "Insert a pin.")  # shared "I" not cut off


@pytest.mark.parametrize(
    ("chosen", "rejected", "why"),
    [
        ("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: b", "identical"),
        ("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: ", "empty reply"),
        (
            "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
            "\n\nHuman: a\n\nAssistant: x\n\nHuman: c\n\nAssistant: d",
            "diverges before the last reply",
        ),
        ("no dialogue here", "nor here", "no shared prompt"),
    ],
)
def test_pairs_that_are_not_clean_comparisons_are_dropped_with_a_reason(chosen, rejected, why):
    assert split_dialogue_pair(chosen, rejected) == (None, why)


def test_dialogue_messages_keep_multiline_turns_whole():
    text = "\n\nHuman: line one\nline two\n\nAssistant: 1. a\n\n2. b"
    assert dialogue_messages(text) == [
        {"role": "user", "content": "line one\nline two"},
        {"role": "assistant", "content": "1. a\n\n2. b"},
    ]


def test_the_real_harmless_pairs_split_and_carve_deterministically(shared_data):
    path = shared_data / "hh-rlhf-harmless" / "test.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    results = [split_dialogue_pair(r["chosen"], r["rejected"]) for r in rows]
    kept = [p for p, _ in results if p is not None]
    assert len(rows) == 2312 and len(kept) > 2300
    for pair in kept[:200]:
        assert pair.messages[-1]["role"] == "user" and pair.chosen != pair.rejected
        assert "\n\nHuman:" not in pair.chosen and "\n\nHuman:" not in pair.rejected
    splits = carve(rows)
    assert {k: len(v) for k, v in splits.items()} == {"test": 250, "dev": 250, "train": 1812}
    assert carve(rows)["dev"] == splits["dev"]
    ids = {k: {json.dumps(r, sort_keys=True) for r in v} for k, v in splits.items()}
    assert (
        not (ids["train"] & ids["dev"])
        and not (ids["train"] & ids["test"])
        and not (ids["dev"] & ids["test"])
    )
