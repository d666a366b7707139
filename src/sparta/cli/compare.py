"""`sparta compare`: run A against run B on the same test examples, with a paired bootstrap interval."""

from __future__ import annotations

import argparse
import json

from sparta.analysis.compare import DEFAULT_METRICS, compare, load_examples


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="A - B on one per-example score of the same test examples, with a paired bootstrap 95% interval",
        description="Compare two runs scored on the same examples: each a training run (its examples/test.jsonl), "
        "a `sparta eval --output` dir or a per-example .jsonl file. Prints each run's statistic (accuracy from "
        "'correct', exact match, token NLL, ...), A - B and the percentile interval of A - B over resamples of "
        "the examples, the same resample for both runs.",
    )
    parser.add_argument("a", metavar="A", help="run dir, eval output dir or examples .jsonl")
    parser.add_argument("b", metavar="B", help="the run to compare A with (the same examples)")
    parser.add_argument(
        "--metric",
        help=f"per-example score (default: the first of {', '.join(DEFAULT_METRICS)} both hold; e.g. margin)",
    )
    parser.add_argument("--split", default="test", help="which examples/SPLIT.jsonl of a dir (default: test)")
    parser.add_argument("--samples", type=int, default=10_000, help="bootstrap resamples (default: 10000)")
    parser.add_argument("--seed", type=int, default=0, help="the resampling seed (default: 0)")
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="the interval's coverage (default: 0.95)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    a, b = load_examples(args.a, args.split), load_examples(args.b, args.split)
    result = compare(a, b, args.metric, args.samples, args.seed, args.confidence)
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, **result.as_dict()}))
        return 0
    width = max(len(args.a), len(args.b))
    print(
        f"{result.metric} on {result.examples} {args.split} examples "
        f"(paired bootstrap, {result.samples:,} resamples, seed {result.seed})"
    )
    print(f"  A  {args.a:<{width}}  {result.a:.4f}")
    print(f"  B  {args.b:<{width}}  {result.b:.4f}")
    print(
        f"  A - B = {result.difference:+.4f}, {result.confidence:.0%} interval "
        f"[{result.low:+.4f}, {result.high:+.4f}]"
    )
    return 0
