"""The preference-optimisation grid (docs/RESULTS.md, "Preference optimisation on hh-harmless"), one queue at a time.

    PYTHONPATH=<pinned worktree>/src python experiments/dpo_hh.py QUEUE OUT [--precision fp32]

SmolLM2-135M-Instruct, DPO (sigmoid loss, beta 0.1) on hh-harmless (the fixed 1,812 / 250 / 250 carve, pairs of
at most 512 tokens), every cell in one precision. Every cell is the full protocol, so the rate bracket and the
table are the same cells:
  * a cell: 600 training pairs (580 usable), 1 epoch (73 steps of 8), then the dev DPO loss on all dev pairs
    and, on all test pairs, preference accuracy, reward margin, KL estimate, greedy generation length on the
    first 20 prompts of each split, and each pair's scores in examples/test.jsonl (for `sparta compare`); the
    first SpaRTA cell also scores the untrained model (its log-prob preference: results.json zero_shot,
    examples/zero-shot.test.jsonl);
  * each method's rate: cells at three rates of the ladder (experiments/ladder.py) and, while the lowest dev loss
    sits at an end, the next rate beyond it (at most two more), so that the chosen rate has a worse neighbour on
    each side; OUT/chosen-METHOD.json records the method's dev losses and its chosen rate;
  * SFT then DPO: SpaRTA SFT on the chosen replies of the same 600 training pairs (1 epoch, lr 1e-2, the rate
    measured for SpaRTA SFT on GSM8K with this model), then SpaRTA DPO `--init-from` it at SpaRTA's chosen rate.
SpaRTA on v_proj,o_proj at LoRA r=8 (q,v)'s budget (density 3.47%), LoRA r=8 alpha 16 on q,v, full fine-tuning
with a frozen copy as its reference; no dropout (a dropped-out policy would be compared with a reference that is
not, as TRL's DPO default also avoids). Queue "a" runs SpaRTA and SFT-then-DPO, queue "b" LoRA and full
fine-tuning: two one-thread jobs. A finished cell (results.json) is skipped; a half-finished one continues from
its newest checkpoint.

Rates are probed at the full 600 pairs because probes on 200 pairs with dev loss on 100 dev pairs could not pick
one (experiments/results/dpo-hh-probe200): every SpaRTA probe's dev loss stayed at or above the untrained log 2,
rising with the rate, so the bracket walked down to the rate that moves the model least.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from ladder import check_precision, choose_rate, lr_name, train

START = {"sparta": [3e-4, 1e-3, 3e-3], "lora": [1e-4, 3e-4, 1e-3], "full": [3e-6, 1e-5, 3e-5]}
METHOD_FLAGS = {
    "sparta": shlex.split("--method sparta --targets v_proj,o_proj --density 0.0347"),
    "lora": shlex.split("--method lora --lora-r 8 --lora-alpha 16 --lora-dropout 0"),
    "full": ["--method", "full"],
}
COMMON = shlex.split(
    "--task hh-harmless --beta 0.1 --dpo-loss sigmoid --epochs 1 --batch-size 8 --warmup-ratio 0.1 "
    "--dropout 0 --no-progress --save-every 25 --seed 0"
)
CELL = shlex.split("--max-train-samples 600")
SFT_LR = 1e-2
QUEUES = {"a": ["sparta", "sft-then-dpo"], "b": ["lora", "full"]}


def cell(method: str, lr: float, out: Path, precision: list[str]) -> dict:
    """One cell of `method` at rate `lr` (OUT/cells/METHOD-lrLR); the first SpaRTA rate scores the untrained model."""
    zero_shot = [] if (method, lr) == ("sparta", START["sparta"][0]) else ["--no-zero-shot"]
    flags = [*COMMON, *CELL, *METHOD_FLAGS[method], "--lr", str(lr), *zero_shot, *precision]
    return train(out / "cells" / f"{method}-lr{lr_name(lr)}", flags)


def choose(method: str, out: Path, precision: list[str]) -> float:
    """`method`'s rate, on dev loss over its bracket of cells (all dev losses in OUT/chosen-METHOD.json)."""
    dev: dict[float, float] = {}

    def dev_loss(lr: float) -> float:
        dev[lr] = cell(method, lr, out, precision)["metrics"]["dev"]["loss"]
        return dev[lr]

    lr = choose_rate(START[method], dev_loss)
    record = {"lr": lr, "dev_loss": {lr_name(r): loss for r, loss in sorted(dev.items())}}
    (out / f"chosen-{method}.json").write_text(json.dumps(record, indent=2) + "\n")
    return lr


def chosen_replies(out: Path) -> dict[str, Path]:
    """The SFT data of SFT-then-DPO: each training pair's prompt and chosen reply as chat messages (the same 600
    pairs the DPO cells train on: the same seed and sample size), and the dev pairs' for the dev NLL."""
    from sparta.tasks import get_task, load_splits
    from sparta.tasks.preference import pair_of

    splits = load_splits(get_task("hh-harmless"), seed=0, max_train_samples=600)
    files = {}
    for split in ("train", "dev"):
        rows = []
        for row in splits[split]:
            pair, _ = pair_of(row)
            if pair is not None:
                rows.append({"messages": [*pair.messages, {"role": "assistant", "content": pair.chosen}]})
        files[split] = out / "sft-data" / f"{split}.jsonl"
        files[split].parent.mkdir(parents=True, exist_ok=True)
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def sft_then_dpo(out: Path, dpo_lr: float, precision: list[str]) -> None:
    data = chosen_replies(out)
    sft = out / "sft-then-dpo" / "sft"
    sft_flags = shlex.split(
        f"--task custom --train-file {data['train']} --dev-file {data['dev']} --epochs 1 --batch-size 8 "
        f"--warmup-ratio 0.1 --dropout 0 --no-progress --no-zero-shot --eval-generate false --save-every 25 "
        f"--seed 0 --max-length 512 --lr {SFT_LR}"
    )
    train(sft, [*sft_flags, *METHOD_FLAGS["sparta"], *precision])
    dpo = [*COMMON, *CELL, *METHOD_FLAGS["sparta"], "--lr", str(dpo_lr), "--init-from", str(sft)]
    train(out / "sft-then-dpo" / "dpo", [*dpo, "--no-zero-shot", *precision])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("queue", choices=sorted(QUEUES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    check_precision(args.out, args.precision)
    precision = ["--precision", args.precision]
    for method in QUEUES[args.queue]:
        if method == "sft-then-dpo":
            sft_then_dpo(args.out, choose("sparta", args.out, precision), precision)
        else:
            print(f"{method}: chosen lr {choose(method, args.out, precision):g}", flush=True)
        print(f"{method}: done", flush=True)


if __name__ == "__main__":
    main()
