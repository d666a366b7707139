"""`sparta tune-density`: a short, budgeted search for the SpaRTA density of a task (resumable)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  sparta tune-density --task sst2 --budget-runs 6 --small-samples 300 --large-samples 1000 --max-steps 60
  sparta tune-density --task custom --train-file train.jsonl --dev-file dev.jsonl --grid 1e-3,1e-2,1e-1

Every `sparta train` flag sets the base run (--density and --max-train-samples are chosen by the search).
Runs go to OUTPUT/<stage>/d<density>/seed<k>/ (finished runs are reused); OUTPUT gets tune.json, tune.md, tune.png."""


def _floats(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    from sparta.train.config import add_train_arguments

    parser = subparsers.add_parser(
        "tune-density",
        help="search the SpaRTA density of a task (budgeted, resumable)",
        description="Coarse log grid of densities on a small training subset with early stopping, refined around "
        "the best, then the finalists on a larger subset; recommends the density with the best dev loss whose "
        "train/dev gap has closed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_argument_group("search")
    group.add_argument("--budget-runs", type=int, default=8, help="training runs in all (default: 8)")
    group.add_argument("--grid", type=_floats, help="coarse densities (default: 1e-4,1e-3,1e-2,1e-1)")
    group.add_argument(
        "--small-samples",
        type=_optional_int,
        default=500,
        help="training examples for the coarse and refine stages (default: 500)",
    )
    group.add_argument(
        "--large-samples",
        type=_optional_int,
        default=2000,
        help="training examples for the finalists ('none': no final stage; default: 2000)",
    )
    group.add_argument(
        "--finalists", type=int, default=2, help="densities rerun on the larger subset (default: 2)"
    )
    group.add_argument(
        "--gap-tol",
        type=float,
        default=0.15,
        help="gap closed when last dev loss - last train loss <= gap_tol * dev loss (default: 0.15)",
    )
    group.add_argument(
        "--window", type=int, default=3, help="logged train losses averaged for the gap (default: 3)"
    )
    group.add_argument(
        "--patience",
        type=_optional_int,
        default=2,
        help="early stopping patience in dev evaluations (default: 2)",
    )
    group.add_argument(
        "--in-process", action="store_true", help="train in this process instead of subprocesses"
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparta.errors import SpartaError
    from sparta.experiments.tune import tune_density
    from sparta.train.config import config_from_args

    cfg = config_from_args(args)
    if args.window < 1 or args.gap_tol < 0 or args.finalists < 0:
        raise SpartaError("--window must be >= 1, --gap-tol >= 0 and --finalists >= 0")
    output = cfg.output or f"runs/tune-{cfg.task}"
    result = tune_density(
        cfg.to_dict(),
        output,
        grid=args.grid,
        budget_runs=args.budget_runs,
        small_samples=args.small_samples,
        large_samples=args.large_samples,
        finalists=args.finalists,
        gap_tol=args.gap_tol,
        window=args.window,
        patience=args.patience,
        isolation="process" if args.in_process else "subprocess",
    )
    from sparta.experiments.tune import evidence_table

    print(evidence_table(result))
    print(f"wrote {output}/tune.json, tune.md and tune.png")
    return 0
