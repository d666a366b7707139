"""The GSM8K instruction-tuning grid (docs/RESULTS.md, "Instruction fine-tuning on GSM8K"), one queue at a time.

    PYTHONPATH=<pinned worktree>/src python experiments/gsm8k_sft.py QUEUE OUT [--precision bf16-mixed]

SmolLM2-135M-Instruct on GSM8K, every cell in one precision:
  * rate probes: 200 training examples, 1 epoch (25 steps of 8), dev and test answer NLL on fixed 200-example
    subsets; each method starts from three rates of the ladder ..., 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, ...
    and, while its lowest dev NLL sits at an end, probes the next rate beyond it (at most two more), so that the
    chosen rate has a worse neighbour on each side;
  * trained cells at each method's chosen rate: the same 1,000 training examples, 1 epoch (125 steps of 8), dev
    NLL on the 500 carved dev problems, test answer NLL on all 1,319 test problems, then exact match of greedy
    generations (at most 256 new tokens) on the fixed 250-problem test subset (`sparta eval --max-eval-samples
    250 --generate`); SpaRTA and LoRA at seeds 0 and 1, full fine-tuning at seed 0;
  * zero-shot: the untrained model's test NLL (1,319) and exact match (250).
SpaRTA on v_proj,o_proj at LoRA r=8 (q,v)'s budget (density 3.47%), LoRA r=8 alpha 16 dropout 0.1 on q,v, full
fine-tuning. Queue "a" runs SpaRTA and full fine-tuning, queue "b" LoRA and zero-shot: two one-thread jobs.
A finished cell (results.json) is skipped; a half-finished one continues from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ladder import check_precision, choose_rate, lr_name, run, sparta, train

START = {"sparta": [1e-3, 3e-3, 1e-2], "lora": [3e-4, 1e-3, 3e-3], "full": [1e-5, 3e-5, 1e-4]}
METHOD_FLAGS = {
    "sparta": ["--method", "sparta", "--targets", "v_proj,o_proj", "--density", "0.0347"],
    "lora": ["--method", "lora", "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0.1"],
    "full": ["--method", "full"],
}
COMMON = shlex.split(
    "--task gsm8k --epochs 1 --batch-size 8 --warmup-ratio 0.1 --no-progress --no-zero-shot "
    "--eval-generate false --save-every 25"
)
PROBE = ["--max-train-samples", "200", "--max-eval-samples", "200"]
MAIN = ["--max-train-samples", "1000"]
# (method, seed) cells of each queue, seed 0 of every method first; seed s also draws the 1,000 training
# examples, so every method at one seed trains on the same ones
QUEUES = {"a": [("sparta", 0), ("full", 0), ("sparta", 1)], "b": [("lora", 0), ("lora", 1)]}


def probe(method: str, out: Path, precision: list[str]):  # noqa: ANN201
    """The dev NLL of one rate probe of `method` (a cell under OUT/probe/)."""

    def dev_loss(lr: float) -> float:
        cell = out / "probe" / f"{method}-lr{lr_name(lr)}"
        flags = [*COMMON, *PROBE, *METHOD_FLAGS[method], "--lr", str(lr), *precision]
        return train(cell, flags)["metrics"]["dev"]["loss"]

    return dev_loss


def exact_match(run_dir: Path, precision: list[str]) -> None:
    """Exact match of greedy generations on the fixed 250-problem test subset, into RUN/em250/."""
    target = run_dir / "em250"
    if not (target / "results.json").is_file():
        flags = shlex.split("--task gsm8k --split test --max-eval-samples 250 --generate --overwrite")
        run(sparta("eval", str(run_dir), *flags, "--output", str(target), *precision), run_dir / "em250.log")


def zero_shot(out: Path, precision: list[str]) -> None:
    base = ["eval", "smollm2-135m-instruct", "--task", "gsm8k", "--split", "test", *precision]
    for name, extra in (("nll", ["--no-generate"]), ("em250", ["--max-eval-samples", "250", "--generate"])):
        target = out / "zero-shot" / name
        if not (target / "results.json").is_file():
            run(
                sparta(*base, *extra, "--output", str(target), "--overwrite"),
                out / "zero-shot" / f"{name}.log",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("queue", choices=sorted(QUEUES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()
    check_precision(args.out, args.precision)
    precision = ["--precision", args.precision]
    chosen: dict[str, float] = {}
    for method, _ in QUEUES[args.queue]:
        if method not in chosen:
            chosen[method] = choose_rate(START[method], probe(method, args.out, precision))
            print(f"{method}: chosen lr {chosen[method]:g}", flush=True)
    if args.queue == "b":
        zero_shot(args.out, precision)
    for method, seed in QUEUES[args.queue]:
        cell = args.out / "main" / f"{method}-seed{seed}"
        flags = [*COMMON, *MAIN, *METHOD_FLAGS[method], "--lr", str(chosen[method]), "--seed", str(seed)]
        train(cell, [*flags, *precision])
        exact_match(cell, precision)
        print(f"{cell.name}: done", flush=True)


if __name__ == "__main__":
    main()
