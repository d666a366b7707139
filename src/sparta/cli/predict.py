"""`sparta predict`: classify texts with a trained run (or a classification model dir)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="print the predicted label and probabilities for texts",
        description="Classify TEXT with the model in DIR. Tasks with several text fields take that many TEXTs "
        "per example, in field order (e.g. MRPC: two sentences); a TEXT that is a JSON object is one example.",
    )
    parser.add_argument(
        "dir", metavar="DIR", help="training output dir, or an HF sequence-classification model dir"
    )
    parser.add_argument("texts", metavar="TEXT", nargs="+", help="input text(s)")
    parser.add_argument(
        "--task", help="task name (default: the run's own task; required for a plain model dir)"
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per example")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from sparta.merging import is_merged_dir
    from sparta.train import load_run, predict
    from sparta.train.inference import examples_from_texts

    if is_merged_dir(args.dir):  # a `sparta merge` output: every task's prediction
        from sparta.cli.merge import run_predict

        return run_predict(args)
    loaded = load_run(args.dir, task=args.task, device=args.device)
    examples = examples_from_texts(loaded.task, args.texts)
    for pred in predict(loaded, examples):
        if args.json:
            print(json.dumps(pred))
        else:
            probs = " ".join(f"{name}={p:.4f}" for name, p in pred["probabilities"].items())
            print(f"{pred['label']}\t{probs}")
    return 0
