"""`sparta generate`: text from an SFT run, an exported or merged causal LM, or a base model; one prompt streamed
to the terminal as it is generated, or a JSONL file of prompts in batches."""

from __future__ import annotations

import argparse
import json
import sys

from transformers import TextStreamer

from sparta.adapter.config import DTYPE_NAMES
from sparta.cli.evaluate import add_precision_argument
from sparta.errors import SpartaError
from sparta.fileio import atomic_file
from sparta.runs import Loaded, generate_texts, open_model, read_prompts
from sparta.runs.causal import LANGUAGE_MODELLING

EPILOG = """examples:
  sparta generate runs/gsm8k "Natalia sold clips to 48 of her friends in April, and then half as many in May. \\
How many clips did she sell altogether?"
  sparta generate smollm2-135m-instruct "Write a haiku about sparse updates." --temperature 0.7 --seed 1
  sparta generate exported/gsm8k --file questions.jsonl --output answers.jsonl

DIR is a `sparta train` run of a language-modelling task, a `sparta export` or `sparta merge` of one, or a base
model (registry alias, hub id or directory). Instruct models read the prompt through their chat template. Each
line of --file is {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}, ...]}; the output keeps
the line's fields and adds "completion"."""


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `sparta generate` and `sparta chat` share: the model, how to sample, where to run."""
    parser.add_argument("dir", metavar="DIR", help="SFT run, exported or merged causal LM, model dir or name")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="most tokens per answer (default: 256)"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 (the default): greedy; above 0: sampling"
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    parser.add_argument("--seed", type=int, help="seed for sampling (default: unseeded)")
    parser.add_argument("--system", help="system prompt (default: the run's task's, if any)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="the weights' dtype (default: float32)")
    add_precision_argument(parser)


def sampling(args: argparse.Namespace) -> dict:
    """The keyword arguments of `generate_texts` given on the command line."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "system": args.system,
    }


def open_for_generation(args: argparse.Namespace) -> Loaded:
    return open_model(
        args.dir, device=args.device, dtype=args.dtype, objective=LANGUAGE_MODELLING, precision=args.precision
    )


def streamer(loaded: Loaded) -> TextStreamer:
    """Prints the answer's words to standard output as they are generated (special tokens hidden)."""
    return TextStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text with an SFT run, an exported or merged causal LM, or a base model",
        description="Answer PROMPT (streamed to the terminal as it is generated) or every prompt of --file "
        "(batched) with the model in DIR; greedy unless --temperature is above 0.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_generation_arguments(parser)
    parser.add_argument("prompts", metavar="PROMPT", nargs="*", help="prompt(s), answered one after another")
    parser.add_argument("--file", metavar="JSONL", help="prompts, one JSON object a line (see below)")
    parser.add_argument(
        "--output",
        metavar="JSONL",
        help="with --file: write the lines and completions here (default: stdout)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="prompts per batch with --file (default: 8)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.prompts) == bool(args.file):
        raise SpartaError("give either PROMPT(s) or --file prompts.jsonl")
    if args.output and not args.file:
        raise SpartaError("--output goes with --file; a PROMPT's answer is printed")
    if args.batch_size < 1:
        raise SpartaError(f"--batch-size must be at least 1, got {args.batch_size}")
    records = read_prompts(args.file) if args.file else None  # a bad file fails before the model loads
    loaded = open_for_generation(args)
    if records is None:
        for prompt in args.prompts:
            generate_texts(loaded, [prompt], streamer=streamer(loaded), **sampling(args))
        return 0
    texts = generate_texts(loaded, [p for _, p in records], batch_size=args.batch_size, **sampling(args))
    lines = "".join(
        json.dumps({**r, "completion": t}, ensure_ascii=False) + "\n"
        for (r, _), t in zip(records, texts, strict=True)
    )
    if args.output:
        with atomic_file(args.output) as tmp:
            tmp.write_text(lines, encoding="utf-8")
        print(f"wrote {len(texts)} completions to {args.output}")
    else:
        sys.stdout.write(lines)
    return 0
