"""`sparta eval` (alias `evaluate`): metrics of a trained run or a classification model dir on a task split."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        aliases=["evaluate"],
        help="evaluate a trained run (or a merged model dir) on a task split",
        description="Rebuild the classifier from DIR (a `sparta train` output or an HF model dir) and print its "
        "metrics on one split; --output writes a results.json of the same shape as training's.",
    )
    parser.add_argument(
        "dir", metavar="DIR", help="training output dir, or an HF sequence-classification model dir"
    )
    parser.add_argument(
        "--task", help="task name (default: the run's own task; required for a plain model dir)"
    )
    parser.add_argument(
        "--split", default="test", choices=("train", "dev", "test"), help="split (default: test)"
    )
    parser.add_argument("--data-dir", help="folder holding <task>/<split>.jsonl.gz")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on a fixed-seed subset of this size")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per batch (default: 32)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype")
    parser.add_argument("--output", metavar="DIR", help="write DIR/results.json with these metrics")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing results.json in --output"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sparta.errors import SpartaError
    from sparta.merging import is_merged_dir
    from sparta.train import evaluate_run, load_run
    from sparta.train.results import RESULTS_FILE, write_json

    if is_merged_dir(args.dir):  # a `sparta merge` output: evaluate one task's head
        from sparta.cli.merge import run_eval

        return run_eval(args)

    out = Path(args.output) if args.output else None
    if out is not None and (out / RESULTS_FILE).exists() and not args.overwrite:
        raise SpartaError(f"{out / RESULTS_FILE} exists; pass --overwrite or pick another --output")
    loaded = load_run(args.dir, task=args.task, device=args.device, dtype=args.dtype)
    metrics = evaluate_run(loaded, args.split, args.data_dir, args.max_eval_samples, args.batch_size)
    print(f"{loaded.task.name} {args.split}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        results = {
            "config": {k: v for k, v in vars(args).items() if k != "func"},
            "task": loaded.task.name,
            "method": loaded.info.get("method"),
            "model": {"name": loaded.info.get("model", args.dir), "instruct": loaded.info["instruct"]},
            "metrics": {args.split: metrics},
        }
        write_json(out / RESULTS_FILE, results)
    return 0
