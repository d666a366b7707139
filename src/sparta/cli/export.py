"""`sparta export`: one SpaRTA adapter merged into its base model, as a plain transformers classifier."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a standalone transformers model with the adapter and head merged in",
        description="Merge ADAPTER (a `sparta train` output dir or a bare adapter dir) into its base model and save "
        "an AutoModelForSequenceClassification directory with the tokenizer; it loads without sparta installed "
        "and runs exactly as fast as the base model.",
    )
    parser.add_argument("adapter", metavar="ADAPTER", help="training output dir or adapter dir")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the exported model")
    parser.add_argument("--model", help="base model (default: the one the adapter records)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparta.merging import export_adapter

    out = export_adapter(args.adapter, args.output, model=args.model, overwrite=args.overwrite)
    print(
        f"exported {args.adapter} to {out} (load it with AutoModelForSequenceClassification.from_pretrained)"
    )
    return 0
