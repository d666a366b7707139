"""The GRPO grid (docs/RESULTS.md, "Reinforcement learning on generated arithmetic"), one queue at a time.

    PYTHONPATH=<pinned worktree>/src python experiments/grpo_arith.py QUEUE OUT [--precision bf16-mixed]

SmolLM2-135M-Instruct, GRPO on the generated arithmetic task at difficulty 2 (a + b, operands 1..20: the base
model's sampled accuracy about 22%, greedy 56%), rewards `exact` + 0.1 `format`, every cell in one precision:
  * a step: 8 prompts x 8 completions (temperature 0.7, at most 64 new tokens), one optimizer step
    (num_iterations 1), group-normalised advantages, no KL term; AdamW, 10% warmup, linear decay;
  * rate probes: 16 steps (1,024 rollouts) at seed 0, greedy dev accuracy on 200 held-out problems at the end;
    each method from three rates of the ladder (experiments/ladder.py) and, while its best sits at an end, the
    next rate beyond it (at most two more); OUT/chosen-METHOD.json records the probes and the chosen rate;
  * trained cells at the chosen rate: 40 steps (2,560 rollouts), greedy dev accuracy on 500 held-out problems
    every 10 steps (the curve), test accuracy on 500 at the end; seeds 0 and 1 (seed s also draws the prompts);
    the first SpaRTA cell also scores the untrained model (results.json zero_shot).
SpaRTA on v_proj,o_proj at LoRA r=8 (q,v)'s budget (density 3.47%), LoRA r=8 alpha 16 on q,v, no dropout.
Queue "a" runs SpaRTA, queue "b" LoRA: two one-thread jobs. A finished cell (results.json) is skipped; a
half-finished one continues from its newest checkpoint (--save-every 4).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from ladder import check_precision, choose_rate, lr_name, train

START = {"sparta": [3e-4, 1e-3, 3e-3], "lora": [3e-4, 1e-3, 3e-3]}
METHOD_FLAGS = {
    "sparta": shlex.split("--method sparta --targets v_proj,o_proj --density 0.0347"),
    "lora": shlex.split("--method lora --lora-r 8 --lora-alpha 16 --lora-dropout 0"),
}
COMMON = shlex.split(
    "--task arithmetic --difficulty 2 --rewards exact,format=0.1 --batch-size 8 --num-generations 8 "
    "--temperature 0.7 --max-new-tokens 64 --warmup-ratio 0.1 --dropout 0 --log-every 1 --no-progress "
    "--save-every 4"
)
PROBE = shlex.split("--max-steps 16 --eval-every 16 --max-eval-samples 200 --seed 0 --no-zero-shot")
MAIN = shlex.split("--max-steps 40 --eval-every 10 --max-eval-samples 500")
QUEUES = {"a": ["sparta"], "b": ["lora"]}
SEEDS = (0, 1)


def choose(method: str, out: Path, precision: list[str]) -> float:
    """`method`'s rate: the probe of highest dev accuracy (its negative is what the ladder minimises)."""
    accuracy: dict[float, float] = {}

    def minus_accuracy(lr: float) -> float:
        flags = [*COMMON, *PROBE, *METHOD_FLAGS[method], "--lr", str(lr), *precision]
        result = train(out / "probe" / f"{method}-lr{lr_name(lr)}", flags)
        accuracy[lr] = result["metrics"]["dev"]["accuracy"]
        return -accuracy[lr]

    lr = choose_rate(START[method], minus_accuracy)
    record = {"lr": lr, "dev_accuracy": {lr_name(r): a for r, a in sorted(accuracy.items())}}
    (out / f"chosen-{method}.json").write_text(json.dumps(record, indent=2) + "\n")
    return lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("queue", choices=sorted(QUEUES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()
    check_precision(args.out, args.precision)
    precision = ["--precision", args.precision]
    for method in QUEUES[args.queue]:
        lr = choose(method, args.out, precision)
        print(f"{method}: chosen lr {lr:g}", flush=True)
        for seed in SEEDS:
            zero_shot = [] if (method, seed) == ("sparta", 0) else ["--no-zero-shot"]
            flags = [*COMMON, *MAIN, *METHOD_FLAGS[method], "--lr", str(lr), "--seed", str(seed), *zero_shot]
            train(out_cell := args.out / "main" / f"{method}-seed{seed}", [*flags, *precision])
            print(f"{out_cell.name}: done", flush=True)


if __name__ == "__main__":
    main()
