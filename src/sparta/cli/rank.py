"""`sparta rank`: ranks of weight changes between a base model and a fine-tune or adapter (paper Appendix A)."""

from __future__ import annotations

import argparse
import json

from sparta.analysis.rank import RULES, delta_ranks
from sparta.errors import SpartaError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rank",
        help="ranks of W_ft - W_base per weight matrix (full fine-tunes, PEFT LoRA or SpaRTA adapters)",
        description="Rank of the change of every 2-D weight between BASE and FINETUNED (Hugging Face model "
        "directories with safetensors, sharded or not; weight names matched up to the task model's prefix), "
        "grouped like the paper's Tables 7-8. FINETUNED may also be a PEFT LoRA adapter (rank of B A x scaling, "
        "at most r), a SpaRTA adapter (checked against BASE's weights first) or a `sparta train` run directory; "
        "BASE may be left out when FINETUNED records its base model.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[BASE] FINETUNED",
        help="base (pre-trained) model directory, then a fine-tuned model, adapter or run directory",
    )
    p.add_argument(
        "--tol",
        type=float,
        help="relative tolerance: singular values <= TOL x sigma_max count as zero (default: the --rule)",
    )
    p.add_argument(
        "--rule",
        choices=RULES,
        default="torch",
        help="default tolerance: 'torch' = max(rows, cols) x eps(float32) x sigma_max (torch's matrix_rank default, "
        "as the paper); 'storage' = ignore what rounding W_ft to its stored dtype can explain (full models only)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if len(args.paths) > 2:
        raise SpartaError(f"sparta rank takes [BASE] FINETUNED, got {len(args.paths)} paths")
    base, finetuned = args.paths if len(args.paths) == 2 else (None, args.paths[0])
    report = delta_ranks(base, finetuned, rule=args.rule, tol=args.tol)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    return 0
