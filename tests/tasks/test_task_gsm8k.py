"""GSM8K: the spec, its splits on the shared data, calculator-annotation stripping, and the final-number parser."""

from __future__ import annotations

import gzip
import json

import pytest
from sftkit import SMOL, lm_task, targets, tokens, word_tokenizer

from sparta.errors import SpartaError
from sparta.tasks import compute_metrics, encode_example, exact_match, get_task, load_splits, reference_text
from sparta.tasks.chat import encode_text
from sparta.tasks.gsm8k import extract_answer, strip_calculator

NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
    "altogether in April and May.\n#### 72",
}


@pytest.fixture
def gsm8k_dir(shared_data):
    if not (shared_data / "gsm8k" / "train.jsonl.gz").is_file():
        pytest.skip(f"GSM8K is absent from {shared_data}")
    return shared_data


def test_spec():
    t = get_task("gsm8k")
    assert (t.objective, t.format, t.num_labels, t.label_names) == (
        "language-modelling",
        "prompt-completion",
        0,
        (),
    )
    assert t.metrics == ("loss", "exact_match") and t.generation_metric and t.answer_parser == "gsm8k"
    assert (t.prompt_field, t.completion_field, t.dev_from, t.dev_size) == (
        "question",
        "answer",
        "train",
        500,
    )
    assert not t.keep_calculator and get_task("gsm8k", keep_calculator=True).keep_calculator
    assert get_task("GSM-8K") == t
    with pytest.raises(SpartaError, match="language-modelling task: its loss and exact match come from"):
        compute_metrics(t, [0], [0])


def test_splits(gsm8k_dir):
    s = load_splits("gsm8k", gsm8k_dir)
    assert {k: len(v) for k, v in s.items()} == {"train": 7473 - 500, "dev": 500, "test": 1319}
    assert load_splits("gsm8k", gsm8k_dir) == s  # the dev carve is deterministic
    with gzip.open(gsm8k_dir / "gsm8k" / "train.jsonl.gz", "rt") as f:
        original = [json.loads(line) for line in f]
    train, dev = {r["question"] for r in s["train"]}, {r["question"] for r in s["dev"]}
    assert not train & dev and train | dev == {r["question"] for r in original}
    assert set(s["dev"][0]) == {"question", "answer"}  # rows as they are: no label added
    small = load_splits("gsm8k", gsm8k_dir, max_train_samples=50, max_eval_samples=20, seed=3)
    assert [len(small[k]) for k in ("train", "dev", "test")] == [50, 20, 20]


def test_real_answers_parse_and_lose_their_annotations(gsm8k_dir):
    task = get_task("gsm8k")
    rows = load_splits(task, gsm8k_dir)
    for row in rows["train"] + rows["test"]:
        final = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        ref = reference_text(task, row)
        assert "<<" not in ref and ">>" not in ref and ref.endswith(row["answer"].rsplit("\n", 1)[1])
        assert extract_answer(row["answer"]) == extract_answer(ref) == final
        assert exact_match(task, f"So the answer is {final}.", ref)
    kept = get_task("gsm8k", keep_calculator=True)
    assert any("<<" in reference_text(kept, row) for row in rows["test"])


def test_annotations_are_stripped_from_the_targets_only():
    tok = word_tokenizer(SMOL)
    task = get_task("gsm8k")
    assert reference_text(task, NATALIA) == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72"
    )
    assert reference_text(get_task("gsm8k", keep_calculator=True), NATALIA) == NATALIA["answer"]
    assert strip_calculator("a <<1+1=2>>2 b <<2*3=6>>6") == "a 2 b 6"
    ids, mask = encode_example(task, NATALIA, tok, instruct=True)
    # the targets are the cleaned answer and the end of turn
    assert targets(tok, ids, mask) == tokens(tok, encode_text(tok, reference_text(task, NATALIA))) + [
        "<|im_end|>"
    ]
    ids_kept, _ = encode_example(get_task("gsm8k", keep_calculator=True), NATALIA, tok, instruct=True)
    assert len(ids_kept) > len(ids)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("#### $1,234.", "1234"),
        ("The total is -5 degrees.\n#### -5", "-5"),
        ("She pays $-3 ... so -$3", "-3"),
        ("#### 0.50", "0.5"),
        ("#### 72.0", "72"),
        ("3.75 per hour", "3.75"),
        ("10 - 4 = 6", "6"),  # a minus with a space is subtraction, not a sign
        ("5-3 is 2, then 1,000,000 more", "1000000"),
        ("#### 7\n\n#### 8", "7"),  # several ####: the first one with a number
        ("#### seven\n#### 9", "9"),
        ("#### none given, 12 then 13", "12"),
        ("It is 12, and 13", "13"),  # no ####: the last number
        ("no number at all", None),
        ("####", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_exact_match():
    gsm, ref = get_task("gsm8k"), "... so 1000 in all.\n#### 1,000"
    assert exact_match(gsm, "She has $1,000.", ref) and exact_match(gsm, "#### 1000.00", ref)
    assert not exact_match(gsm, "#### 100", ref) and not exact_match(gsm, "I don't know", ref)
    assert not exact_match(gsm, "#### 5", "no number")  # a reference without a number matches nothing
    sft = lm_task(format="prompt-completion")  # no answer parser: texts are compared
    assert exact_match(sft, " #### 1,000 \n", "#### 1,000") and not exact_match(
        sft, "#### 1000", "#### 1,000"
    )
    with pytest.raises(SpartaError, match="answer_parser must be one of gsm8k or None, got 'math'"):
        get_task("gsm8k", answer_parser="math")
