"""`sparta models list|path`: show the model registry and where a model's files are."""

from __future__ import annotations

import argparse

from sparta.errors import SpartaError
from sparta.models import DEFAULT_MODEL, REGISTRY, hub_snapshot_dir, is_cached, resolve_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list model aliases or print a model's local directory")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="list registered aliases: source, instruct flag, cached here?").set_defaults(
        func=cmd_list
    )
    path = sub.add_parser(
        "path", help="print a model's local directory (converting the GGUF default if needed)"
    )
    path.add_argument("name", help="alias, local directory or hub id")
    path.set_defaults(func=cmd_path)


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("alias", "source", "instruct", "cached")]
    for spec in REGISTRY.values():
        alias = spec.alias + (" (default)" if spec.alias == DEFAULT_MODEL else "")
        rows.append(
            (alias, spec.source, "yes" if spec.instruct else "no", "yes" if is_cached(spec) else "no")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    resolved = resolve_model(args.name)
    path = resolved.path if resolved.is_local else hub_snapshot_dir(resolved.path)
    if path is None:
        raise SpartaError(
            f"hub model '{resolved.path}' is not in the local Hugging Face cache; download it where the hub is "
            f"reachable (`hf download {resolved.path}`), or pass a local directory or a registered alias"
        )
    print(path)
    return 0
