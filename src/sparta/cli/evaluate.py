"""`sparta eval` (alias `evaluate`): metrics of a trained run, a merged model's task, an exported model or a base
model on one task split."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparta.adapter.config import DTYPE_NAMES
from sparta.errors import SpartaError
from sparta.fileio import write_json, write_jsonl
from sparta.runs import evaluate, open_model
from sparta.runs.layout import RESULTS_FILE, examples_file


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """`--precision` (alias `--mixed-precision`) of the commands that run a model (`sparta.precision`)."""
    parser.add_argument(
        "--precision",
        "--mixed-precision",
        metavar="{fp32,bf16-mixed,fp16-mixed}",
        help="compute precision (accelerate's no/bf16/fp16 accepted); default: the precision the run was "
        "trained in, else bf16-mixed on a GPU or CPU with fast bf16, fp32 elsewhere",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        aliases=["evaluate"],
        help="evaluate a trained run (or a merged, exported or base model) on a task split",
        description="Rebuild the model from DIR (a `sparta train` output, a `sparta merge` output, an HF model "
        "dir, or a model name with --task) and print its metrics on one split; --output writes a results.json of "
        "the same shape as training's.",
    )
    parser.add_argument("dir", metavar="DIR", help="training output dir, merged dir, model dir or model name")
    parser.add_argument(
        "--task", help="task name (default: the run's own task; required for a merged or plain model)"
    )
    parser.add_argument(
        "--split", default="test", choices=("train", "dev", "test"), help="split (default: test)"
    )
    parser.add_argument("--data-dir", help="folder holding <task>/<split>.jsonl.gz")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on a fixed-seed subset of this size")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per batch (default: 32)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="the weights' dtype (default: float32)")
    add_precision_argument(parser)
    parser.add_argument(
        "--generate",
        action=argparse.BooleanOptionalAction,
        help="SFT runs: also score greedy generations (exact match); default: when the task asks for it (GSM8K)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="most tokens per generation with --generate (256)"
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="write DIR/results.json with these metrics and DIR/examples/SPLIT.jsonl with each example's "
        "scores (for sparta compare)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing results.json in --output"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else None
    if out is not None and (out / RESULTS_FILE).exists() and not args.overwrite:
        raise SpartaError(f"{out / RESULTS_FILE} exists; pass --overwrite or pick another --output")
    loaded = open_model(
        args.dir, task=args.task, device=args.device, dtype=args.dtype, precision=args.precision
    )
    if loaded.kind == "merged" and not args.task:
        raise SpartaError(f"{args.dir} is a merged model; pass --task, one of {', '.join(loaded.tasks)}")
    head = loaded.head(args.task if loaded.kind == "merged" else None)
    records: list | None = [] if out is not None else None
    metrics = evaluate(
        loaded,
        head.name,
        args.split,
        args.data_dir,
        args.max_eval_samples,
        args.batch_size,
        generate=args.generate,
        max_new_tokens=args.max_new_tokens,
        records=records,
    )
    shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    merged = " (merged)" if loaded.kind == "merged" else ""
    print(f"{head.spec.name if not merged else head.name} {args.split}{merged}: {shown}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        results = {
            "config": {k: v for k, v in vars(args).items() if k != "func"},
            "task": head.name,
            "method": "merged" if merged else loaded.info.get("method"),
            "model": {"name": loaded.info.get("model", args.dir), "instruct": head.instruct},
            "metrics": {args.split: metrics},
            "precision": {"name": loaded.precision.name, "reason": loaded.precision.reason},
        }
        if records:
            examples = examples_file(out, args.split)
            examples.parent.mkdir(exist_ok=True)
            write_jsonl(examples, records)
        write_json(out / RESULTS_FILE, results)
    return 0
