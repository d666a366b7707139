"""`sparta predict`: classify texts with a trained run, a merged model (every task), an exported or a base model."""

from __future__ import annotations

import argparse
import json

from sparta.cli.evaluate import add_precision_argument
from sparta.runs import examples_from_texts, open_model, predict, predict_tasks
from sparta.runs.inference import check_classifier


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="print the predicted label and probabilities for texts",
        description="Classify TEXT with the model in DIR. Tasks with several text fields take that many TEXTs "
        "per example, in field order (e.g. MRPC: two sentences); a TEXT that is a JSON object is one example. "
        "A merged model answers for each of its tasks (or only --task).",
    )
    parser.add_argument("dir", metavar="DIR", help="training output dir, merged dir, model dir or model name")
    parser.add_argument("texts", metavar="TEXT", nargs="+", help="input text(s)")
    parser.add_argument(
        "--task", help="task name (default: the run's own task; required for a plain model dir)"
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    add_precision_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per example")
    parser.set_defaults(func=run)


def _probs(pred: dict) -> str:
    return " ".join(f"{name}={p:.4f}" for name, p in pred["probabilities"].items())


def run(args: argparse.Namespace) -> int:
    loaded = open_model(args.dir, task=args.task, device=args.device, precision=args.precision)
    check_classifier(loaded)
    if loaded.kind == "merged":  # every task's prediction, one backbone pass per prompt format
        for pred in predict_tasks(loaded, args.texts, [args.task] if args.task else None):
            if args.json:
                print(json.dumps(pred))
                continue
            for task, p in pred.items():
                print(f"{task}\t{p['label']}\t{_probs(p)}")
        return 0
    for pred in predict(loaded, examples_from_texts(loaded.task, args.texts)):
        print(json.dumps(pred) if args.json else f"{pred['label']}\t{_probs(pred)}")
    return 0
