"""Writing files so that a crash never leaves one half-written: every file and folder sparta saves goes through
here (a temporary sibling, then an atomic rename), and JSON is read back with one clear error."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparta.errors import SpartaError


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it is flushed and renamed over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `final` by renames (never half-written)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    old = final.with_name(f".{final.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically (values JSON does not know are written as strings)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """Parse a JSON file; a missing or corrupt one is a SpartaError naming it (and `what` it should be), with
    the line and column of a syntax error."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise SpartaError(f"{label} does not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SpartaError(f"{label} is not valid JSON ({json_problem(err)})") from None


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))


def read_jsonl(path: str | os.PathLike, what: str = "") -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; a missing or corrupt one is a SpartaError naming it and the line."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise SpartaError(f"{label} does not exist")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SpartaError(f"{label} cannot be read ({err})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise SpartaError(f"{label} is not valid JSON lines (line {number}: {err.msg})") from None
    return rows


def json_problem(err: Exception) -> str:
    """Where and what a JSON reading error is: "line 2, column 7: Expecting value" (else the error's text)."""
    if isinstance(err, json.JSONDecodeError):
        return f"line {err.lineno}, column {err.colno}: {err.msg}"
    return str(err)
