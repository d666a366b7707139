"""Generation from a causal LM: batched, left-padded, with the KV cache, through transformers' `model.generate`.

Used for exact-match evaluation during and after SFT (greedy by default) and by `sparta generate` / `sparta chat`
(sampling, streaming). The model may be a plain causal LM, a `SpartaModel` (its deltas are merged into the
weights, so `generate` runs the base model's own code) or a PEFT model. Prompts are token-id lists (the chat
template already applied by the caller); each batch is padded on the left, whatever the tokenizer's
`padding_side`, so every prompt's last token sits at the same position and generation appends to all rows at
once; `generate` derives the position ids from the attention mask, so a row's numbers do not depend on how much
padding it got. Generation stops at the tokenizer's EOS and at the chat format's end-of-turn token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, StoppingCriteriaList

from sparta.errors import SpartaError
from sparta.objectives.batching import collate, sorted_batches

# End-of-turn markers of the chat formats we know (ChatML, Gemma, Llama 3, Phi-3, Mistral's EOS is "</s>").
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


def stop_token_ids(tokenizer: Any, model: nn.Module | None = None) -> list[int]:
    """The ids generation stops at: the tokenizer's EOS, the model's generation-config EOS (one or several) and
    every known end-of-turn token the tokenizer has as a token of its own."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None) if model is not None else None
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        ids += value if isinstance(value, list) else [value] if value is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
    return sorted(set(int(i) for i in ids))


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model whose `generate` to call: DDP's inner module (SpartaModel and PEFT models have their own)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def generation_config(
    tokenizer: Any,
    model: nn.Module,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
) -> GenerationConfig:
    """A config built from our arguments alone (not the checkpoint's sampling defaults): greedy at temperature 0."""
    if max_new_tokens < 1:
        raise SpartaError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise SpartaError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature} and {top_p}")
    sample = temperature > 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=None,  # top_p alone decides (transformers' default top_k=50 would cut the nucleus further)
        num_beams=1,
        eos_token_id=stop_token_ids(tokenizer, model),
        pad_token_id=tokenizer.pad_token_id,
    )


@contextlib.contextmanager
def seeded(device: torch.device, seed: int | None) -> Iterator[None]:
    """Sampling inside draws from `seed` when given, leaving the global random state as it was; else as it is."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@torch.no_grad()
def generate_batch(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    config: GenerationConfig,
    *,
    streamer: Any = None,
    stopping_criteria: list | None = None,
) -> torch.Tensor:
    """The new token ids (rows in prompt order, padded with the pad id after a row stops) of one batch of prompts,
    left-padded and generated together; `stopping_criteria` (transformers' `StoppingCriteria`) may end rows
    early. The model must be in eval mode."""
    net = _unwrapped(model)
    batch = collate(prompts, tokenizer.pad_token_id, "left")
    ids = batch["input_ids"].to(_device(net))
    return net.generate(
        input_ids=ids,
        attention_mask=batch["attention_mask"].to(ids.device),
        generation_config=config,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList(stopping_criteria or []),
    )[:, ids.shape[1] :]


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 8,
    streamer: Any = None,
) -> list[str]:
    """The decoded new text of each prompt (special tokens skipped), in prompt order.

    Greedy at `temperature` 0, else sampling with `temperature` and `top_p` (from `seed` when given, which leaves
    the global random state as it was). Prompts run longest first in batches of `batch_size`; with a `streamer`
    (e.g. transformers' `TextStreamer`, which takes one sequence) they run one at a time.
    """
    tokens = generate_tokens(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        streamer=streamer,
    )
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in tokens]


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 8,
    streamer: Any = None,
) -> list[list[int]]:
    """The new token ids of each prompt, in prompt order: up to and including the first stop token (a
    completion without one has `max_new_tokens` tokens), no padding. Arguments as `generate`'s."""
    if not prompts:
        return []
    check_prompts(prompts, tokenizer)
    net = _unwrapped(model)
    config = generation_config(tokenizer, net, max_new_tokens, temperature, top_p)
    stops = set(config.eos_token_id)
    batches = [[i] for i in range(len(prompts))] if streamer is not None else None
    batches = batches or sorted_batches([len(p) for p in prompts], max(1, batch_size))
    out: list[list[int]] = [[] for _ in prompts]
    was_training = net.training
    net.eval()
    try:
        with seeded(_device(net), seed):
            for idx in batches:
                new = generate_batch(net, tokenizer, [prompts[i] for i in idx], config, streamer=streamer)
                for i, row in zip(idx, new.cpu().tolist(), strict=True):
                    end = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
                    out[i] = row[:end]
    finally:
        net.train(was_training)
    return out


def check_prompts(prompts: list[list[int]], tokenizer: Any) -> None:
    """A SpartaError if a prompt is empty or the tokenizer cannot pad a batch."""
    if any(not p for p in prompts):
        raise SpartaError("cannot generate from an empty prompt")
    if tokenizer.pad_token_id is None:
        raise SpartaError("the tokenizer has no pad token; batched generation pads with it")
