"""`sparta train`: fine-tune a model with SpaRTA, LoRA, DoRA, head-only or full FT, for sequence classification,
instruction fine-tuning (SFT) or preference optimisation (DPO): the task implies which (`--objective` for custom
tasks)."""

from __future__ import annotations

import argparse

from sparta.train.config import add_train_arguments, config_from_args
from sparta.train.distributed import end_launch
from sparta.train.recipes import train

EPILOG = """examples:
  sparta train --task sst2 --method sparta --density 0.0347 --targets v_proj,o_proj \\
      --max-train-samples 2000 --epochs 1 --batch-size 16 --warmup-ratio 0.1 --output runs/sst2-sparta
  sparta train --config configs/sst2_lora.yaml --seed 1 --output runs/sst2-lora-1
  sparta train --task custom --train-file train.jsonl --test-file test.jsonl --method head --output runs/mine
  sparta train --task gsm8k --method sparta --density 0.0347 --targets v_proj,o_proj \
      --max-train-samples 1000 --output runs/gsm8k-sparta            # SFT (docs/sft.md)
  sparta train --task hh-harmless --method sparta --density 0.0347 --targets v_proj,o_proj \
      --init-from runs/sft-run --output runs/hh-dpo                  # DPO (docs/dpo.md)

YAML keys are the long option names (dashes or underscores); flags given on the command line win.
Without --lr the method's default rate is used (README: Default learning rates); the log says which.
The output dir gets results.json, run.json, log.csv, tb/, tokenizer/ and adapter/ (full: model/)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model (sparta, lora, dora, head, full): classification, SFT or DPO",
        description="Adapt a pretrained LM to a task (sequence classification, instruction fine-tuning or "
        "preference pairs, as the task implies) and write metrics and the adapter.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    train(config_from_args(args))
    end_launch()
    return 0
