"""Tiny stand-ins for the training tests: a word-level tokenizer, tiny Llama checkpoints and a toy JSONL task.

The toy task is trivially learnable: label 1 iff the sentence contains "good" (else it contains "bad").
"""

from __future__ import annotations

import random
import subprocess
import warnings
from pathlib import Path

import torch

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "was",
    "is",
    "very",
    "quite",
    "really",
    "good",
    "bad",
    "Yes",
    "No",
    "user",
    "assistant",
    "system",
    "Classify",
    "following",
    "text",
    "Respond",
    "with",
    "0",
    "or",
    "1",
    ".",
    ",",
    ":",
    "!",
    "?",
    "story",
    "music",
    "scene",
    "ending",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FILLER = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "story",
    "music",
    "scene",
    "ending",
    "was",
    "is",
    "very",
    "quite",
    "really",
]


def make_tokenizer(chat: bool):
    """A word-level fast tokenizer (whitespace/punctuation split) with a dedicated pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def make_causal_lm(vocab_size: int, tied: bool, seed: int = 0):
    from transformers import LlamaForCausalLM

    from tinyconfigs import tiny_llama_config

    torch.manual_seed(seed)
    config = tiny_llama_config(
        vocab_size=vocab_size,
        max_position_embeddings=128,
        bos_token_id=2,
        eos_token_id=3,
        num_labels=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config)


def save_model_dir(path: Path, chat: bool, tied: bool) -> Path:
    """A local HF checkpoint dir (causal LM + tokenizer); with a chat template it counts as an instruct model."""
    tok = make_tokenizer(chat)
    model = make_causal_lm(len(tok), tied)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def toy_examples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        words = rng.sample(FILLER, rng.randint(2, 8))
        words.insert(rng.randrange(len(words) + 1), "good" if label else "bad")
        rows.append({"text": " ".join(words), "label": label})
    return rows


# one process with batch 2B vs two processes with batch B: the same global batches, so float rounding only
MULTI_PROCESS_REL_TOL = 1e-5


def close(a: float, b: float, rel_tol: float = MULTI_PROCESS_REL_TOL) -> bool:
    return abs(a - b) <= rel_tol * abs(a)


def assert_same_run(one: dict, two: dict, *, dev_and_test: bool = True) -> None:
    """Two results.json documents have the same train (and dev, test) losses within MULTI_PROCESS_REL_TOL."""
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert close(h1["train_loss"], h2["train_loss"]), (h1, h2)
        if dev_and_test and "dev_loss" in h1:
            assert close(h1["dev_loss"], h2["dev_loss"]), (h1, h2)
    if dev_and_test:
        assert close(one["metrics"]["test"]["loss"], two["metrics"]["test"]["loss"])


# What a gloo rank sometimes prints when it aborts in C++ teardown at interpreter exit, after its work is done
# (seen under CPU load with torch 2.13, also in workers that destroy their process group first).
TEARDOWN_ABORT = "terminate called without an active exception"


def run_launch(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` of a multi-process launch (`python -m torch.distributed.run` or `accelerate.commands.launch`).
    A launch whose only failure is a rank's abort at exit (`TEARDOWN_ABORT`, no Python exception in any rank)
    counts as finished: the caller then checks every file the run had to write, so a run that stopped before its
    end still fails its test."""
    proc = subprocess.run(cmd, **kwargs)
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr or ""
    if proc.returncode != 0 and TEARDOWN_ABORT in err and not _rank_raised(err):
        warnings.warn(
            f"a rank aborted at exit ({TEARDOWN_ABORT}); its outputs are checked instead", stacklevel=2
        )
        proc.returncode = 0
    return proc


def _rank_raised(err: str) -> bool:
    """Whether a rank printed a Python traceback (the launcher's own report starts in `<frozen runpy>`)."""
    blocks = err.split("Traceback (most recent call last):\n")[1:]
    return any("<frozen runpy>" not in block.split("\n", 1)[0] for block in blocks)
