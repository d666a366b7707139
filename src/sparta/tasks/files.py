"""Reading example files: JSON Lines, JSON, CSV and TSV, optionally gzipped, into lists of dicts."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

from sparta.errors import SpartaError

DATA_SUFFIXES = tuple(s + gz for s in (".jsonl", ".json", ".csv", ".tsv") for gz in ("", ".gz"))


def _open(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def read_records(path: str | Path) -> list[dict]:
    """Read all records of a data file; the format is chosen by the suffix (before an optional .gz)."""
    return read_located(path)[0]


def read_located(path: str | Path) -> tuple[list[dict], list[str]]:
    """(records, where each one is in the file): "line N" for JSON Lines and CSV/TSV (the last line of a record
    that spans several), "record N" for a JSON array; so errors can point at the row to fix."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if not path.is_file():
        raise SpartaError(f"data file not found: {path}")
    if not name.endswith(DATA_SUFFIXES):
        raise SpartaError(f"{path}: unsupported data file type; use one of {', '.join(DATA_SUFFIXES)}")
    try:
        with _open(path) as f:
            if name.endswith((".csv", ".tsv")):
                reader = csv.DictReader(f, delimiter="\t" if name.endswith(".tsv") else ",")
                located = [(row, f"line {reader.line_num}") for row in reader]
            elif name.endswith(".jsonl"):
                located = _json_lines(f, path)
            else:
                text = f.read()
                if text.lstrip().startswith("["):
                    located = [(r, f"record {i}") for i, r in enumerate(json.loads(text), 1)]
                else:
                    located = _json_lines(text.splitlines(), path)
    except (OSError, UnicodeDecodeError, EOFError, csv.Error, json.JSONDecodeError) as e:
        raise SpartaError(f"{path}: cannot read data file: {e}") from e
    if not located:
        raise SpartaError(f"{path}: data file holds no examples")
    rows = [r for r, _ in located]
    if not all(isinstance(r, dict) for r in rows):
        raise SpartaError(f"{path}: every example must be a JSON object (a dict of fields)")
    return rows, [w for _, w in located]


def _json_lines(lines, path: Path) -> list[tuple[dict, str]]:  # noqa: ANN001 - a file or a list of str
    return [(_json_line(line, path, i), f"line {i}") for i, line in enumerate(lines, 1) if line.strip()]


def _json_line(line: str, path: Path, lineno: int) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise SpartaError(f"{path}:{lineno}: invalid JSON: {e.msg}") from e
