"""The `sparta` command line: a thin dispatcher over the library's modules.

Each sub-command lives in its own module under `sparta.cli` and exposes `register(subparsers)`,
which adds its parser and sets `func(args) -> int | None` as the default handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sparta.console import configure_logging
from sparta.errors import SpartaError

# Sub-command modules, in the order `sparta --help` lists them.
COMMAND_MODULES = [
    "models",
    "train",
    "evaluate",
    "predict",
    "generate",
    "chat",
    "serve",
    "merge",
    "export",
    "memory",
    "rank",
    "compare",
    "reproduce",
    "tune",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparta",
        description="Sparse Random Parameter Adaptation (SpaRTA) of transformer language models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"sparta.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpartaError as err:
        print(f"sparta {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparta {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
