"""Throughput of serving many adapters of one base model; not a test (run it on a quiet machine).

Requests (random-token prompts, greedy, a fixed number of new tokens each) alternate round-robin among K adapters
of SmolLM2-135M-Instruct, K = 1, 4, 16, and are all queued at once; generated tokens per second is measured for:

* `sparta serve`'s scheduler (in process, no HTTP): SpaRTA adapters on Wv,Wo at LoRA r=8 (q,v)'s budget, batched
  per adapter (`--max-batch`) and switched in place between batches; K = 1 is serving one merged model;
* PEFT LoRA r=8 (q,v), the same K adapters unmerged, every batch mixing them (`generate(adapter_names=...)`);
* plain batched `generate` of the base model alone (what a token costs with no adapter at all).

Target (the issue): with 4 adapters, SpaRTA at >= 0.9x its single merged model's tokens/s, and above PEFT LoRA.

    .venv/bin/python bench/serve_speed.py [--requests 64] [--new-tokens 32] [--threads 2] \\
        [--out bench/results/serve.json]
    .venv/bin/python bench/serve_speed.py --quick   # a tiny random model, a few requests: checks the script runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from sparta import SpartaConfig, get_sparta_model
from sparta.models import DEFAULT_MODEL, load_tokenizer, resolve_model
from sparta.objectives.batching import collate
from sparta.objectives.generation import generate, generation_config
from sparta.serve import AdapterPool, Job, Sampling, Scheduler

LORA_R, LORA_TARGETS, SPARTA_TARGETS = 8, ("q_proj", "v_proj"), ("v_proj", "o_proj")


def write_base(root: Path, quick: bool) -> Path:
    """The base model's directory: SmolLM2-135M-Instruct, or with --quick a tiny random Llama with its tokenizer."""
    resolved = resolve_model(DEFAULT_MODEL)
    if not quick:
        return Path(resolved.path)
    tokenizer = load_tokenizer(resolved)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    return root / "base"


def lora_budget_density(model: torch.nn.Module) -> float:
    """The Wv,Wo density with as many trainable values as LoRA r=8 on q,v."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    lora = sum(LORA_R * (m.in_features + m.out_features) for n, m in linears if n.endswith(LORA_TARGETS))
    sparse = sum(m.weight.numel() for n, m in linears if n.endswith(SPARTA_TARGETS))
    return lora / sparse


def write_runs(root: Path, base: Path, k: int) -> dict[str, Path]:
    """K SpaRTA SFT run directories of `base` (small random deltas) and K PEFT LoRA adapters."""
    tokenizer = load_tokenizer(resolve_model(str(base)))
    runs = {}
    for i in range(k):
        model = AutoModelForCausalLM.from_pretrained(str(base))
        density = lora_budget_density(model)
        sparta = get_sparta_model(
            model, SpartaConfig(density=density, target_modules=list(SPARTA_TARGETS), seed=i)
        )
        with torch.no_grad():
            for p in sparta.delta_parameters().values():
                p.normal_(std=1e-3)
        run = root / f"sparta-{i}"
        sparta.save_pretrained(run / "adapter")
        tokenizer.save_pretrained(run / "tokenizer")
        info = {"method": "sparta", "objective": "language-modelling", "model": str(base), "instruct": True}
        (run / "run.json").write_text(json.dumps(info))
        runs[f"sparta-{i}"] = run
        torch.manual_seed(i)
        lora = get_peft_model(
            AutoModelForCausalLM.from_pretrained(str(base)),
            LoraConfig(r=LORA_R, lora_alpha=16, target_modules=list(LORA_TARGETS)),
        )
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=1e-3)
        lora.save_pretrained(str(root / f"lora-{i}"))
    return runs


async def _served(
    scheduler: Scheduler, requests: list[tuple[str, list[int]]], new_tokens: int
) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    jobs = [Job(model, ids, Sampling(new_tokens), loop) for model, ids in requests]
    start = time.perf_counter()
    for job in jobs:
        scheduler.submit(job)
    tokens = 0
    for job in jobs:
        while (event := await job.events.get())[0] == "text":
            pass
        if event[0] == "error":
            raise event[1]
        tokens += event[1].completion_tokens
    return time.perf_counter() - start, tokens


def sparta_serve(base: Path, runs: dict[str, Path], prompts: list[list[int]], args) -> dict:
    pool = AdapterPool.open(str(base), runs, device=args.device, precision=args.precision)
    scheduler = Scheduler(pool, max_batch=args.max_batch, max_queue=len(prompts))
    names = list(runs)
    requests = [(names[i % len(names)], ids) for i, ids in enumerate(prompts)]
    asyncio.run(_served(scheduler, requests[: args.max_batch], args.new_tokens))  # warm-up
    seconds, tokens = asyncio.run(_served(scheduler, requests, args.new_tokens))
    scheduler.close()
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def _batched(model, tokenizer, prompts, args, names=None) -> dict:
    config = generation_config(tokenizer, model, args.new_tokens, 0.0, 1.0)
    start, tokens = time.perf_counter(), 0
    for at in range(0, len(prompts), args.max_batch):
        batch = collate(prompts[at : at + args.max_batch], tokenizer.pad_token_id, "left")
        extra = {"adapter_names": names[at : at + args.max_batch]} if names else {}
        with torch.no_grad():
            new = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                generation_config=config,
                **extra,
            )[:, batch["input_ids"].shape[1] :]
        tokens += int((new != tokenizer.pad_token_id).sum())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def lora_mixed(base: Path, root: Path, k: int, prompts: list[list[int]], args) -> dict:
    tokenizer = load_tokenizer(resolve_model(str(base)))
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base)), str(root / "lora-0"), adapter_name="lora-0"
    )
    for i in range(1, k):
        model.load_adapter(str(root / f"lora-{i}"), adapter_name=f"lora-{i}")
    model.eval()
    names = [f"lora-{i % k}" for i in range(len(prompts))]
    _batched(model, tokenizer, prompts[: args.max_batch], args, names[: args.max_batch])  # warm-up
    return _batched(model, tokenizer, prompts, args, names)


def plain_base(base: Path, prompts: list[list[int]], args) -> dict:
    tokenizer = load_tokenizer(resolve_model(str(base)))
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    generate(model, tokenizer, prompts[: args.max_batch], max_new_tokens=args.new_tokens)  # warm-up
    return _batched(model, tokenizer, prompts, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--adapters", default="1,4,16", help="the values of K (default: 1,4,16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--quick", action="store_true", help="a tiny random model and 8 requests")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.new_tokens, args.prompt_tokens, args.max_batch = 8, 4, 8, 4
        args.adapters = "1,4"
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.adapters.split(",")]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = write_base(root, args.quick)
        vocab = len(load_tokenizer(resolve_model(str(base))))
        prompts = [
            [rng.randrange(10, vocab) for _ in range(args.prompt_tokens)] for _ in range(args.requests)
        ]
        runs = write_runs(root, base, max(ks))
        report = {
            "model": "tiny-random" if args.quick else DEFAULT_MODEL,
            "settings": vars(args) | {"out": None},
            "base": plain_base(base, prompts, args),
            "sparta": {},
            "lora": {},
        }
        for k in ks:
            chosen = dict(list(runs.items())[:k])
            report["sparta"][k] = sparta_serve(base, chosen, prompts, args)
            report["lora"][k] = lora_mixed(base, root, k, prompts, args)
            merged = report["sparta"][ks[0]]["tokens_per_s"]
            print(
                f"K={k:>2}  sparta {report['sparta'][k]['tokens_per_s']:8.1f} tok/s "
                f"({report['sparta'][k]['tokens_per_s'] / merged:.2f}x one merged)  "
                f"lora {report['lora'][k]['tokens_per_s']:8.1f} tok/s  "
                f"base {report['base']['tokens_per_s']:8.1f} tok/s",
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
