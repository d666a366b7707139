"""Helpers for the language-modelling (SFT) tests: tiny random causal LMs of several families, token-level SFT
data (`random_lm_data`), and a toy prompt/completion task written as JSONL files (`write_toy_sft_files`), which
`sparta.tasks` reads as a custom language-modelling task and `sparta.tasks.chat` renders with the chat template
of tinylm.py's word-level tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config

from tinylm import FILLER

VOCAB = 128
_SMALL = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 3,
}
FAMILY_CONFIGS = {
    "llama-tied": lambda: LlamaConfig(**_SMALL, tie_word_embeddings=True),  # SmolLM2's shape of head
    "llama-untied": lambda: LlamaConfig(**_SMALL, tie_word_embeddings=False),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    ),  # Conv1D layers, tied
    "qwen2": lambda: Qwen2Config(**_SMALL, tie_word_embeddings=False),  # q/k/v biases
    # soft-capped logits; a small cap so that it changes the loss of a random model noticeably
    "gemma2": lambda: Gemma2Config(**_SMALL, head_dim=8, final_logit_softcapping=2.0),
}
FAMILIES = tuple(FAMILY_CONFIGS)


def tiny_lm(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random causal LM of `family` (fp32, eval mode, attention in eager mode for exact comparisons)."""
    torch.manual_seed(seed)
    config = FAMILY_CONFIGS[family]()
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config).eval()


def random_lm_data(
    n: int = 6, seed: int = 0, min_len: int = 5, max_len: int = 14, loss_on: str = "assistant"
):
    """`LMEncoded` of random token sequences, each a "prompt" then a "response" that carries the loss."""
    from sparta.objectives import LMEncoded

    rng = random.Random(seed)
    ids, masks = [], []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        prompt = rng.randint(1, length - 2)
        ids.append([rng.randrange(4, VOCAB) for _ in range(length)])
        masks.append([0] + [1] * (length - 1) if loss_on == "all" else [0] * prompt + [1] * (length - prompt))
    prompts = [seq[: m.index(1)] for seq, m in zip(ids, masks, strict=True)]
    return LMEncoded(ids, masks, prompts, [""] * n)


def toy_sft_examples(n: int, seed: int) -> list[dict]:
    """A user sentence holding "good" or "bad", and the assistant's answer "Yes ." / "No ." to it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good = rng.randrange(2)
        words = rng.sample(FILLER, rng.randint(2, 6))
        words.insert(rng.randrange(len(words) + 1), "good" if good else "bad")
        rows.append({"prompt": " ".join(words), "completion": "Yes ." if good else "No ."})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_toy_sft_files(root: Path, sizes: tuple[int, int, int] = (48, 16, 16)) -> dict[str, str]:
    """{"train", "dev", "test": JSONL file} of `toy_sft_examples` (seeds 1, 2, 3) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    return {
        split: write_jsonl(root / f"{split}.jsonl", toy_sft_examples(n, seed))
        for split, n, seed in zip(("train", "dev", "test"), sizes, (1, 2, 3), strict=True)
    }


def toy_sft_task(files: dict[str, str], **overrides):
    """The custom language-modelling task of `files` (`sparta.tasks.get_task`, as `--task custom` builds it)."""
    from sparta.tasks import get_task

    return get_task("custom", data_files=files, objective="language-modelling", **overrides)
