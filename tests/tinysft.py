"""Stand-ins for the language-modelling (SFT) tests: tiny causal LMs of several families, token-level SFT data,
and a small chat format and task standing in for `sparta.tasks.chat` and a language-modelling `TaskSpec`.

The stand-in chat format keeps to the interface contract of `sparta.tasks.chat` (`encode_example`, `prompt_ids`,
`reference_text`): a user turn and an assistant turn in the tiny tokenizer's ChatML-style markers, the mask
covering the assistant's words and its end-of-turn token. Tests install it with `install_stand_ins`, so they
exercise the objective and the loop whatever the state of the real chat module.
"""

from __future__ import annotations

import random
import sys
import types
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config

from tinylm import FILLER

VOCAB = 128
_SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
          "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}  # fmt: skip
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
    ),  # Conv1D layers, tied  # fmt: skip
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


# -- a stand-in chat format and task -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ToySFTTask:
    """The fields of a language-modelling `TaskSpec` that the training side reads."""

    name: str = "toy-sft"
    objective: str = "language-modelling"
    metrics: tuple[str, ...] = ("loss", "exact_match")
    generation_metric: bool = False
    max_length: int = 48
    num_labels: int = 0
    label_names: tuple[str, ...] = ()
    label_words: tuple[str, ...] = ()


def _turns(example: dict) -> tuple[str, str]:
    return (f"<|im_start|> user {example['prompt']} <|im_end|> <|im_start|> assistant",
            f"{example['completion']} <|im_end|>")  # fmt: skip


def encode_example(task, example, tokenizer, instruct, loss_on="assistant"):  # noqa: ANN001, ANN201
    prompt, answer = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in _turns(example))
    ids = [*prompt, *answer]
    mask = [0] * len(prompt) + [1] * len(answer) if loss_on == "assistant" else [0] + [1] * (len(ids) - 1)
    return ids, mask


def prompt_ids(task, example, tokenizer, instruct):  # noqa: ANN001, ANN201
    return tokenizer(_turns(example)[0], add_special_tokens=False)["input_ids"]


def reference_text(task, example):  # noqa: ANN001, ANN201
    return example["completion"]


def exact_match(task, prediction: str, reference: str) -> bool:
    return prediction.strip() == reference.strip()


def chat_module() -> types.ModuleType:
    module = types.ModuleType("sparta.tasks.chat")
    module.encode_example, module.prompt_ids, module.reference_text = (
        encode_example,
        prompt_ids,
        reference_text,
    )
    return module


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


def install_stand_ins(monkeypatch, task: ToySFTTask | None = None, sizes=(48, 16, 16)) -> ToySFTTask:
    """Make `sparta.train` build the toy SFT task for `--task toy-sft` (its splits from `toy_sft_examples`; any
    other task as usual) and render it with the stand-in chat format; `sparta.tasks.exact_match` compares
    stripped text."""
    import sparta.tasks
    from sparta.train import setup

    task = task or ToySFTTask()
    splits = {
        name: toy_sft_examples(n, seed)
        for (name, n, seed) in zip(("train", "dev", "test"), sizes, (1, 2, 3), strict=True)
    }

    real_build, real_load = setup.build_task, setup.load_splits

    def build_task(args):  # noqa: ANN001, ANN202
        return task if args["name"] == task.name else real_build(args)

    def load_splits(spec, data_dir, seed=0, max_train_samples=None, max_eval_samples=None):  # noqa: ANN001
        if spec is not task:
            return real_load(spec, data_dir, seed=seed, max_train_samples=max_train_samples,
                             max_eval_samples=max_eval_samples)  # fmt: skip
        cut = {"train": max_train_samples, "dev": max_eval_samples, "test": max_eval_samples}
        return {k: v[: cut[k]] if cut[k] else list(v) for k, v in splits.items()}

    monkeypatch.setitem(sys.modules, "sparta.tasks.chat", chat_module())
    monkeypatch.setattr(sparta.tasks, "exact_match", exact_match, raising=False)
    monkeypatch.setattr(setup, "build_task", build_task)
    monkeypatch.setattr(setup, "load_splits", load_splits)
    return task


def greedy_generation_module() -> types.ModuleType:
    """A stand-in for `sparta.objectives.generation`: greedy decoding with full forwards (no KV cache), one prompt
    at a time, stopping at `<|im_end|>`; returns the decoded new tokens."""
    module = types.ModuleType("sparta.objectives.generation")

    @torch.no_grad()
    def generate(model, tokenizer, prompts, *, max_new_tokens=256, batch_size=8, **_):  # noqa: ANN001, ANN003
        stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
        texts = []
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(max_new_tokens):
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if nxt == stop:
                    break
                ids.append(nxt)
            texts.append(tokenizer.decode(ids[len(prompt) :], skip_special_tokens=True))
        return texts

    module.generate = generate
    return module
