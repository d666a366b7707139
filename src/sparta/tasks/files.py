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
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if not path.is_file():
        raise SpartaError(f"data file not found: {path}")
    if not name.endswith(DATA_SUFFIXES):
        raise SpartaError(f"{path}: unsupported data file type; use one of {', '.join(DATA_SUFFIXES)}")
    try:
        with _open(path) as f:
            if name.endswith((".csv", ".tsv")):
                rows = list(csv.DictReader(f, delimiter="\t" if name.endswith(".tsv") else ","))
            elif name.endswith(".jsonl"):
                rows = [_json_line(line, path, i) for i, line in enumerate(f, 1) if line.strip()]
            else:
                text = f.read()
                rows = (
                    json.loads(text)
                    if text.lstrip().startswith("[")
                    else [
                        _json_line(line, path, i)
                        for i, line in enumerate(text.splitlines(), 1)
                        if line.strip()
                    ]
                )
    except (OSError, UnicodeDecodeError, EOFError, csv.Error, json.JSONDecodeError) as e:
        raise SpartaError(f"{path}: cannot read data file: {e}") from e
    if not rows:
        raise SpartaError(f"{path}: data file holds no examples")
    if not all(isinstance(r, dict) for r in rows):
        raise SpartaError(f"{path}: every example must be a JSON object (a dict of fields)")
    return rows


def _json_line(line: str, path: Path, lineno: int) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise SpartaError(f"{path}:{lineno}: invalid JSON: {e.msg}") from e
