"""`sparta export`: one training run (any method) merged into its base model, as a plain transformers classifier
(an SFT run: a plain causal LM)."""

from __future__ import annotations

import argparse

from sparta.fileio import read_json
from sparta.runs import export_run
from sparta.runs.layout import MODEL_CONFIG


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a standalone transformers model with the adapter and head merged in",
        description="Merge RUN (a `sparta train` output dir of any method: sparta, lora, dora, head or full; or a "
        "bare SpaRTA adapter dir) into its base model and save an AutoModelForSequenceClassification directory "
        "(an SFT run: an AutoModelForCausalLM directory with its generation config) with the tokenizer; it loads "
        "without sparta installed and runs exactly as fast as the base model.",
    )
    parser.add_argument("adapter", metavar="RUN", help="training output dir or SpaRTA adapter dir")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the exported model")
    parser.add_argument("--model", help="base model (default: the one the run records)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = export_run(args.adapter, args.output, model=args.model, overwrite=args.overwrite)
    (architecture,) = read_json(out / MODEL_CONFIG)["architectures"]
    auto = (
        "AutoModelForCausalLM"
        if architecture.endswith("ForCausalLM")
        else "AutoModelForSequenceClassification"
    )
    print(f"exported {args.adapter} to {out} ({architecture}: load it with {auto}.from_pretrained)")
    return 0
