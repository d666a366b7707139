"""What one DPO step costs: peak memory and step time of SpaRTA, LoRA, full fine-tuning and TRL's DPOTrainer.

    .venv/bin/python bench/dpo_step.py [--rounds 2] [--steps 4] [--threads 2] [--out bench/results/dpo]
    .venv/bin/python bench/dpo_step.py --quick       # 1 round, 2 steps: checks the script runs

SmolLM2-135M-Instruct (fp32, CPU), a DPO step of 4 pairs x 2 sequences x about 256 tokens (prompt + reply in the
chat template, loss on the reply), AdamW:
  * `sparta`: `sparta train --objective preference`, SpaRTA on v_proj,o_proj at LoRA r=8's budget; the reference
    is the disabled adapter (W0 written back at phi), run before the policy's forward;
  * `sparta-precomputed`: the same with `--precompute-reference` (the reference log-probs computed once before
    training, so a step runs no reference forward);
  * `lora`: the same loop with PEFT LoRA r=8 on q_proj,v_proj; the reference is PEFT's disabled adapter;
  * `full`: full fine-tuning, the reference a frozen copy of the model;
  * `trl-lora` (the anchor): TRL's `DPOTrainer` with the same PEFT LoRA model and pairs (its reference is also
    the disabled adapter).
Every configuration runs in its own process (peak memory = that process's peak resident set, model loading
included), R rounds with the order rotated; the step time is the median over the timed steps (the first is a
warm-up), and each ratio is the median over rounds of the same round's ratio, so both sides of a ratio ran
minutes apart on the same machine. Run it on a quiet machine: pause background jobs first.

Writes OUT/dpo.md (the table) and OUT/dpo.json (every process's figures).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
PAIRS, WORDS = 4, 112  # prompt and replies of this many words each: about 256 tokens per sequence
SPARTA = ["--method", "sparta", "--targets", "v_proj,o_proj", "--density", "0.0347"]
LORA = ["--method", "lora", "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0"]
CONFIGS = {
    "sparta": SPARTA,
    "sparta-precomputed": [*SPARTA, "--precompute-reference"],
    "lora": LORA,
    "full": ["--method", "full"],
    "trl-lora": None,  # bench/dpo_step.py --trl-worker
}
VOCABULARY = [
    "the",
    "a",
    "river",
    "town",
    "old",
    "new",
    "small",
    "large",
    "quiet",
    "loud",
    "morning",
    "evening",
    "road",
    "garden",
    "window",
    "letter",
    "friend",
    "teacher",
    "story",
    "music",
    "water",
    "light",
    "stone",
    "paper",
    "winter",
    "summer",
    "market",
    "bridge",
    "forest",
    "field",
    "cloud",
    "train",
    "station",
    "door",
]


def write_pairs(path: Path, n: int) -> Path:
    """`n` prompt/chosen/rejected rows of WORDS words each, different text in every row (fixed seed)."""
    import random

    rng = random.Random(0)
    words = lambda: " ".join(rng.choice(VOCABULARY) for _ in range(WORDS))  # noqa: E731
    rows = [{"prompt": words(), "chosen": words(), "rejected": words()} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def step_times(log_csv: Path, batch: int) -> list[float]:
    """Seconds of each optimizer step from log.csv (its examples_per_s is cumulative: seen / train seconds)."""
    with open(log_csv) as f:
        rows = [r for r in csv.DictReader(f) if r.get("examples_per_s")]
    elapsed = [int(r["step"]) * batch / float(r["examples_per_s"]) for r in rows]
    return [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]


def sparta_step(config: str, pairs: Path, out: Path, steps: int, threads: int) -> dict:
    """One `sparta train` DPO process: its step times and peak memory (results.json)."""
    run = out / "runs" / config
    cmd = [sys.executable, "-m", "sparta", "train", "--task", "custom", "--objective", "preference"]
    cmd += [
        "--train-file",
        str(pairs),
        "--model",
        MODEL,
        "--batch-size",
        str(PAIRS),
        "--max-steps",
        str(steps),
    ]
    cmd += ["--lr", "1e-4", "--log-every", "1", "--no-zero-shot", "--eval-generate", "false", "--no-progress"]
    cmd += [
        "--dropout",
        "0",
        "--precision",
        "fp32",
        "--max-length",
        "1024",
        "--output",
        str(run),
        "--overwrite",
    ]
    cmd += CONFIGS[config]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"config": config, "error": proc.stderr[-2000:]}
    results = json.loads((run / "results.json").read_text())
    pair_tokens = results["data"].get("pairs", {}).get("train")
    return {
        "config": config,
        "step_s": step_times(run / "log.csv", PAIRS),
        "peak_rss_mb": results["peak_memory_mb"],
        "trainable": results.get("trainable_params"),
        "pairs": pair_tokens,
    }


def trl_worker(pairs: Path, steps: int, threads: int) -> dict:
    """TRL's DPOTrainer on a PEFT LoRA model of the same pairs (chat format), in this process."""
    torch_threads(threads)
    os.environ["ACCELERATE_MIXED_PRECISION"] = "no"  # fp32, as the sparta configurations
    import datasets
    import trl
    from peft import LoraConfig, get_peft_model
    from transformers import TrainerCallback

    from sparta.models import load_model, load_tokenizer, resolve_model

    resolved = resolve_model(MODEL)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved, task="causal-lm")
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(model, lora)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    chat = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            times.append(time.perf_counter() - self.start)

    args = trl.DPOConfig(
        output_dir=str(BENCH_DIR / "results" / ".trl-tmp"),
        per_device_train_batch_size=PAIRS,
        max_steps=steps,
        learning_rate=1e-4,
        beta=0.1,
        max_length=1024,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        bf16=False,  # TRL's default is bf16 autocast, which a CPU without bf16 instructions emulates ~70x slower
        fp16=False,
    )
    trainer = trl.DPOTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(chat),
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    trainer.train()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"config": "trl-lora", "step_s": times, "peak_rss_mb": rss, "trainable": trainable}


def torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def trl_step(pairs: Path, out: Path, steps: int, threads: int) -> dict:
    result = out / "runs" / "trl-lora.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        __file__,
        "--trl-worker",
        str(result),
        "--pairs",
        str(pairs),
        "--steps",
        str(steps),
    ]
    cmd += ["--threads", str(threads)]
    proc = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {"config": "trl-lora", "error": proc.stderr[-2000:]}
    return json.loads(result.read_text())


def summarise(rounds: list[dict[str, dict]]) -> tuple[str, dict]:
    """The table: per configuration the median step time (timed steps, first dropped) and peak memory, and
    the per-round ratios to LoRA and to full fine-tuning, medians over rounds."""
    asked = list(rounds[0])
    configs = [c for c in CONFIGS if c in asked and all("error" not in r[c] for r in rounds)]
    step = {c: [statistics.median(r[c]["step_s"][1:] or r[c]["step_s"]) for r in rounds] for c in configs}
    peak = {c: [r[c]["peak_rss_mb"] for r in rounds] for c in configs}

    def ratio(values: dict[str, list[float]], c: str, anchor: str) -> float | None:
        if anchor not in values:
            return None
        return statistics.median(a / b for a, b in zip(values[c], values[anchor], strict=True))

    lines = [
        "| configuration | step s | × LoRA | peak RSS MiB | × LoRA | × full |",
        "|---|---|---|---|---|---|",
    ]
    table = {}
    for c in configs:
        table[c] = {
            "step_s": statistics.median(step[c]),
            "step_vs_lora": ratio(step, c, "lora"),
            "peak_rss_mb": statistics.median(peak[c]),
            "peak_vs_lora": ratio(peak, c, "lora"),
            "peak_vs_full": ratio(peak, c, "full"),
        }
        t = table[c]
        fmt = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
        lines.append(
            f"| {c} | {t['step_s']:.1f} | {fmt(t['step_vs_lora'])} | {t['peak_rss_mb']:.0f} | "
            f"{fmt(t['peak_vs_lora'])} | {fmt(t['peak_vs_full'])} |"
        )
    failed = [c for c in asked if c not in configs]
    if failed:
        lines.append(f"\nnot measured (a process failed, see dpo.json): {', '.join(failed)}")
    return "\n".join(lines), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--steps", type=int, default=4, help="optimizer steps per process (the first: warm-up)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "dpo")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 steps")
    parser.add_argument("--trl-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        args.trl_worker.write_text(json.dumps(trl_worker(args.pairs, args.steps, args.threads)))
        return
    if args.quick:
        args.rounds, args.steps = 1, 2
    configs = args.configs.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = write_pairs(args.out / "pairs.jsonl", PAIRS * args.steps)
    rounds = []
    for k in range(args.rounds):
        order = configs[k % len(configs) :] + configs[: k % len(configs)]
        measured = {}
        for c in order:
            measured[c] = (
                trl_step(pairs, args.out, args.steps, args.threads)
                if c == "trl-lora"
                else sparta_step(c, pairs, args.out, args.steps, args.threads)
            )
            shown = (
                measured[c].get("error", "")[-300:]
                or f"steps {measured[c]['step_s']}, peak {measured[c]['peak_rss_mb']:.0f} MiB"
            )
            print(f"round {k + 1} {c}: {shown}", flush=True)
        rounds.append(measured)
    table, summary = summarise(rounds)
    header = (
        f"DPO step, SmolLM2-135M-Instruct fp32, {PAIRS} pairs x 2 x ~256 tokens, {args.threads} threads, "
        f"{args.rounds} rounds x {args.steps} steps (first dropped)\n\n"
    )
    (args.out / "dpo.md").write_text(header + table + "\n")
    (args.out / "dpo.json").write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=2))
    print(header + table)


if __name__ == "__main__":
    main()
