"""One GRPO step on SmolLM2, generation and training apart: SpaRTA (merged) against LoRA (unmerged, or merged
and unmerged around every generation) and the base model.

    .venv/bin/python bench/rl_step.py [--rounds 3] [--threads 2] [--prompts 8] [--generations 8] [--tokens 64]

A GRPO step samples G completions for each of P prompts from the current policy, then trains on them. With
SpaRTA the policy that samples is the training model itself, its deltas merged in place, so generation costs what
the base model costs. PEFT's LoRA generates either unmerged (two extra low-rank matmuls in every adapted layer,
every token) or merged for the generation and unmerged again for training (`merge_adapter` / `unmerge_adapter`
each step). Measured, in one process, paired per round, in one precision (bf16-mixed on a CPU with bf16, else
fp32): generation of P x G completions of exactly `--tokens` new tokens (sampling at T=0.7 with the end-of-turn
tokens held back by `min_new_tokens`, so every state decodes the same number of tokens), and training: `completion_logps` forward and backward
over the same rollouts, one group of G per forward, then AdamW. The arithmetic task's prompts (difficulty 2).
Writes rl_step.md and rl_step.json under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from precision import settings
from sparta.methods import get_method
from sparta.models import load_model, load_tokenizer, quiet_transformers, resolve_model
from sparta.objectives import get_objective
from sparta.objectives.generation import generate_batch, generation_config, seeded
from sparta.objectives.grpo import completion_logps
from sparta.precision import autocast, cpu_bf16_instructions, normalise
from sparta.tasks import get_task, load_splits

MODEL = "smollm2-135m-instruct"
CPU = torch.device("cpu")
STATES = ("base", "sparta", "lora-unmerged", "lora-merge-per-step")


def build(method: str):  # noqa: ANN201
    with quiet_transformers():
        model = load_model(resolve_model(MODEL), task="causal-lm")
    if method == "base":
        return model.eval(), None
    objective = get_objective("grpo")
    cfg = settings("sparta-vo" if method == "sparta" else "lora", model)
    net = get_method(method).apply(model, cfg, objective)
    with torch.no_grad():  # a trained-looking adapter: nonzero deltas / LoRA B, so nothing is skipped
        for p in net.parameters():
            if p.requires_grad:
                p.normal_(std=1e-3)
    params = [p for p in net.parameters() if p.requires_grad]
    return net, torch.optim.AdamW(params, lr=1e-6)


def generation_seconds(net, tokenizer, prompts, state: str, tokens: int, precision: str) -> float:  # noqa: ANN001
    """Seconds to sample one completion of exactly `tokens` new tokens for each prompt, all in one batch, from
    `net` in `state` (LoRA merged before and unmerged after, for "lora-merge-per-step")."""
    config = generation_config(tokenizer, net, tokens, 0.7, 1.0)
    config.min_new_tokens = tokens  # no early stop: every state decodes the same number of tokens
    t0 = time.perf_counter()
    if state == "lora-merge-per-step":
        net.merge_adapter()
    net.eval()
    with torch.no_grad(), autocast(precision, CPU), seeded(CPU, 0):
        new = generate_batch(net, tokenizer, prompts, config)
    if state == "lora-merge-per-step":
        net.unmerge_adapter()
    seconds = time.perf_counter() - t0
    assert new.shape == (len(prompts), tokens), new.shape
    return seconds


def training_seconds(net, optimizer, prompts, completions, pad: int, g: int, precision: str) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    net.train()
    for k in range(0, len(prompts), g):
        with autocast(precision, CPU):
            logps = completion_logps(net, prompts[k : k + g], completions[k : k + g], pad, CPU)
        logps.float().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on a CPU with bf16, else fp32")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = normalise(args.precision) or ("bf16-mixed" if cpu_bf16_instructions() else "fp32")
    tokenizer = load_tokenizer(resolve_model(MODEL))
    task = get_task("arithmetic", difficulty=2)
    data = get_objective("grpo").encode(load_splits(task)["train"][: args.prompts], task, tokenizer, True)
    prompts = [p for p in data.prompts for _ in range(args.generations)]
    nets = {m: build(m) for m in ("base", "sparta", "lora")}
    net_of = {"base": "base", "sparta": "sparta", "lora-unmerged": "lora", "lora-merge-per-step": "lora"}
    base = nets["base"][0]
    config = generation_config(tokenizer, base, args.tokens, 0.7, 1.0)
    config.min_new_tokens = args.tokens
    with torch.no_grad(), autocast(precision, CPU), seeded(CPU, 0):
        completions = generate_batch(base, tokenizer, prompts, config).tolist()
    pad = tokenizer.pad_token_id
    gen: dict[str, list[float]] = {s: [] for s in STATES}
    train: dict[str, list[float]] = {m: [] for m in ("sparta", "lora")}
    for state in STATES:  # warm-up
        generation_seconds(nets[net_of[state]][0], tokenizer, prompts, state, args.tokens, precision)
    for r in range(args.rounds):
        for state in STATES if r % 2 == 0 else STATES[::-1]:
            gen[state].append(
                generation_seconds(nets[net_of[state]][0], tokenizer, prompts, state, args.tokens, precision)
            )
        for m in ("sparta", "lora") if r % 2 == 0 else ("lora", "sparta"):
            net, optimizer = nets[m]
            train[m].append(
                training_seconds(net, optimizer, prompts, completions, pad, args.generations, precision)
            )

    def paired(times: dict, a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    results = {
        "precision": precision,
        "threads": args.threads,
        "args": vars(args),
        "generation": gen,
        "training": train,
    }
    new_tokens = len(prompts) * args.tokens
    lines = [
        f"# One GRPO step: {args.prompts} prompts x {args.generations} completions x {args.tokens} tokens "
        f"(SmolLM2-135M-Instruct, {precision}, {args.threads} threads, {args.rounds} rounds)",
        "",
        "| state | generation s | new tokens/s | / base | training s | / LoRA | step s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for state in STATES:
        g = statistics.median(gen[state])
        m = net_of[state]
        t = statistics.median(train[m]) if m in train else None
        lines.append(
            f"| {state} | {g:.2f} | {new_tokens / g:.0f} | {paired(gen, state, 'base'):.3f} | "
            + (
                f"{t:.2f} | {paired(train, m, 'lora'):.3f} | {g + t:.2f} |"
                if t is not None
                else "— | — | — |"
            )
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rl_step.json").write_text(json.dumps(results, indent=1))
    (out / "rl_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
