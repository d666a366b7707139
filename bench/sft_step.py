"""One SFT training step on SmolLM2: SpaRTA against LoRA, peft-sparta and the floor, with and without checkpointing.

    .venv/bin/python bench/sft_step.py [--rounds 4] [--threads 2] [--precision bf16-mixed] [--out bench/results]

The step is `bench/precision.py`'s (8 sequences x 256 tokens, the loss on the last 128 of each row through the
chunked LM head, backward, AdamW, zero_grad) for SpaRTA on v_proj,o_proj at LoRA r=8 (q,v)'s budget, PEFT LoRA
r=8 on q,v, peft-sparta 0.0.3 on v_proj,o_proj at the same budget (`make bench` installs it) and the floor (the
frozen model with a backward through every block and no weight gradient), each without and with gradient
checkpointing. Every timing is paired: one process holds all eight models and each round times one step of each
in a shuffled order; a ratio is the median of the per-round ratios. Memory is per cell in a fresh process: what 3
steps add to the resident set after set-up (`precision.one`). Every cell runs in one precision: bf16-mixed on a
CPU with bf16 instructions, else fp32 (or `--precision`). Writes sft_step.md and sft_step.json under --out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from precision import build, one, ratio, step
from sparta.precision import cpu_bf16_instructions, normalise

METHODS = ("floor", "sparta-vo", "lora", "peft-sparta-vo")
NAMES = {
    "floor": "floor",
    "sparta-vo": "SpaRTA Wv,Wo",
    "lora": "LoRA r=8 q,v",
    "peft-sparta-vo": "peft-sparta Wv,Wo",
}
CELLS = [(m, c) for c in (False, True) for m in METHODS]


def key(method: str, checkpointing: bool) -> str:
    return f"{method}|{'ckpt' if checkpointing else 'plain'}"


def paired(rounds: int, warmup: int, precision: str) -> dict[str, list[float]]:
    built = {cell: build("sft", cell[0], checkpointing=cell[1]) for cell in CELLS}
    for cell in CELLS * warmup:
        step(*built[cell], precision)
    order = random.Random(0)
    times: dict[str, list[float]] = {key(*cell): [] for cell in CELLS}
    for _ in range(rounds):
        for cell in order.sample(CELLS, len(CELLS)):
            times[key(*cell)].append(step(*built[cell], precision))
    return times


def table(results: dict) -> str:
    times, memory = results["steps"], results["memory"]
    lines = [
        f"# One SFT step, 8 x 256 tokens (SmolLM2-135M-Instruct, {results['precision']}, {results['threads']} "
        f"threads, {results['rounds']} rounds)",
        "",
        "| method | checkpointing | step s | / floor | / LoRA | step adds MB | / LoRA |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for method, checkpointing in CELLS:
        k = key(method, checkpointing)
        floor = ratio(times, k, key("floor", checkpointing))
        lora = ratio(times, k, key("lora", checkpointing))
        mem = memory.get(k, {}).get("step_added_mb")
        lora_mem = memory.get(key("lora", checkpointing), {}).get("step_added_mb")
        mem_cells = "— | —" if mem is None else f"{mem:,.0f} | {mem / lora_mem:.2f}"
        lines.append(
            f"| {NAMES[method]} | {'yes' if checkpointing else 'no'} | {statistics.median(times[k]):.3f} | "
            f"{floor['median']:.3f} ({floor['min']:.3f}-{floor['max']:.3f}) | {lora['median']:.3f} | {mem_cells} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on a CPU with bf16, else fp32")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # METHOD:CKPT(0/1), in a fresh process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = normalise(args.precision) or ("bf16-mixed" if cpu_bf16_instructions() else "fp32")
    if args.one:
        method, checkpointing = args.one.split(":")
        print(json.dumps(one("sft", method, precision, checkpointing == "1")))
        return
    results = {
        "precision": precision,
        "threads": args.threads,
        "rounds": args.rounds,
        "cpu_bf16": cpu_bf16_instructions(),
        "torch": torch.__version__,
        "steps": paired(args.rounds, args.warmup, precision),
        "memory": {},
    }
    if not args.no_memory:
        for method, checkpointing in CELLS:
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--precision", precision]
            cmd += ["--one", f"{method}:{int(checkpointing)}"]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results["memory"][key(method, checkpointing)] = json.loads(done.stdout.strip().splitlines()[-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_step.json").write_text(json.dumps(results, indent=1))
    (out / "sft_step.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
