"""`sparta memory`: training-memory accounting (paper section 5, Table 1) for a parameter count or a model."""

from __future__ import annotations

import argparse
import json

from sparta.analysis import memory as mem
from sparta.errors import SpartaError
from sparta.models import load_model, resolve_model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "memory",
        help="training memory of SpaRTA: the paper's formula and this implementation's accounting",
        description="Memory accounting of SpaRTA training. --paper-table prints the paper's Table 1; "
        "--params N or --model sizes one model (on the meta device: no weights are loaded).",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--paper-table", action="store_true", help="reproduce the paper's Table 1 (2B and 7B)")
    what.add_argument("--params", help="a parameter count n, e.g. 7e9, 7B, 135M (all parameters targeted)")
    what.add_argument("--model", help="a model alias, local HF directory or hub id (its config is enough)")
    p.add_argument(
        "--density", type=float, help="fraction k of targeted weights that is trainable, in (0, 1]"
    )
    p.add_argument(
        "--dtype",
        choices=sorted(mem.DTYPE_BYTES),
        help="weight dtype (default: bf16 for --params, the config's dtype for --model)",
    )
    p.add_argument(
        "--targets", default="all-linear", help="'all-linear' or module-name suffixes, e.g. v_proj,o_proj"
    )
    p.add_argument(
        "--num-labels", type=int, default=2, help="classes c of the classification head (default 2)"
    )
    p.add_argument(
        "--measure", action="store_true", help="also load the model, run one AdamW step and measure"
    )
    p.add_argument("--seed", type=int, default=0, help="index seed for --measure")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.paper_table:
        rows = mem.paper_table()
        if args.json:
            print(
                json.dumps(
                    [{**r, "sparta": {str(k): v for k, v in r["sparta"].items()}} for r in rows], indent=1
                )
            )
        else:
            print(mem.format_paper_table(rows))
        return 0
    if args.density is None:
        raise SpartaError("--density is required with --params or --model (e.g. --density 0.05)")
    density = mem.check_density(args.density)
    if args.num_labels < 1:
        raise SpartaError(f"--num-labels must be >= 1, got {args.num_labels}")
    if args.params is not None:
        if args.measure:
            raise SpartaError("--measure needs --model (a real model to load)")
        n = mem.parse_count(args.params)
        size = mem.ModelSize(
            name=f"n = {args.params}", n=n, dtype=args.dtype or "bf16", targets=[], n_target=n
        )
    else:
        size = mem.size_model(args.model, args.targets, num_labels=args.num_labels, dtype=args.dtype)
    acc = mem.account(size, density)
    if args.measure:
        acc.measured = _measure(args, density)
    print(json.dumps(acc.to_dict(), indent=1) if args.json else mem.format_accounting(acc))
    return 0


def _measure(args: argparse.Namespace, density: float) -> dict:
    dtype = mem.LONG_NAMES.get(args.dtype or "")
    model = load_model(
        resolve_model(args.model), task="classification", num_labels=args.num_labels, dtype=dtype
    )
    return mem.measure_training_state(model, density, args.targets, seed=args.seed, name=args.model)
