"""The rows of language-modelling (SFT) tasks: their three formats, how a format is told from the columns, and the
checks that turn a malformed row into one clear error naming its file and line.

Formats (``TaskSpec.format``; the column names are the spec's ``*_field``s):

* ``messages``: a list of ``{"role": ..., "content": ...}`` turns, roles ``system``, ``user`` and ``assistant``,
  with at least one assistant turn (a CSV cell may hold the list as JSON text);
* ``prompt-completion``: a ``prompt`` (the user turn) and a non-empty ``completion`` (the assistant turn);
* ``text``: plain, non-empty ``text``, every token of which is a training target.

This module knows rows only; `sparta.tasks.chat` turns a row into tokens and a loss mask.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from sparta.errors import SpartaError
from sparta.tasks.files import read_located

MESSAGES, PROMPT_COMPLETION, TEXT = "messages", "prompt-completion", "text"
FORMATS = (MESSAGES, PROMPT_COMPLETION, TEXT)
ROLES = ("system", "user", "assistant")
# how a user names the columns (the flags of `sparta train`, the TaskSpec fields in Python)
COLUMN_FLAGS = (
    "--messages-field, --prompt-field and --completion-field, or --text-field (and --format to choose one of "
    f"{', '.join(FORMATS)}; in Python messages_field=..., prompt_field=..., completion_field=..., text_field=..., "
    "format=...)"
)


class LMFields(Protocol):
    """The TaskSpec fields this module reads (a protocol, so that specs.py may import this module)."""

    @property
    def format(self) -> str: ...
    @property
    def messages_field(self) -> str: ...
    @property
    def prompt_field(self) -> str: ...
    @property
    def completion_field(self) -> str: ...
    @property
    def text_field(self) -> str: ...


@dataclass(frozen=True)
class Columns:
    """A format and its column names, as a task spec has them (the defaults are TaskSpec's)."""

    format: str = MESSAGES
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    text_field: str = "text"


def check_files(files: Iterable[tuple[str, str]], columns: Columns, fmt: str | None) -> tuple[str, int]:
    """(the format: `fmt`, else detected from the first file's columns; the number of training rows), checking
    every row of the (split, path) files with `check_row`."""
    located = [(split, path, *read_located(path)) for split, path in files]
    if fmt is None:
        split, path, rows, _ = located[0]
        fmt = detect_format(rows[0], columns, path)
    if fmt not in FORMATS:
        raise SpartaError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    columns = Columns(
        fmt, columns.messages_field, columns.prompt_field, columns.completion_field, columns.text_field
    )
    for _, path, rows, where in located:
        for row, w in zip(rows, where, strict=True):
            check_row(columns, row, f"{path}: {w}")
    return fmt, sum(len(rows) for split, _, rows, _ in located if split == "train")


def required_columns(task: LMFields) -> tuple[str, ...]:
    """The columns a row of the task's format must have."""
    if task.format == MESSAGES:
        return (task.messages_field,)
    if task.format == PROMPT_COMPLETION:
        return (task.prompt_field, task.completion_field)
    return (task.text_field,)


def detect_format(columns: Iterable[str], task: LMFields, path: str) -> str:
    """The format the columns imply: a messages column, else prompt and completion, else text."""
    have = set(columns)
    if task.messages_field in have:
        return MESSAGES
    if {task.prompt_field, task.completion_field} <= have:
        return PROMPT_COMPLETION
    if task.text_field in have:
        return TEXT
    raise SpartaError(
        f"{path}: cannot tell the data format from the columns {', '.join(map(repr, have)) or '(none)'}; give a "
        f"{task.messages_field!r} column (a list of {{role, content}} turns), {task.prompt_field!r} and "
        f"{task.completion_field!r} columns, or a {task.text_field!r} column, or name yours: {COLUMN_FLAGS}"
    )


def check_row(task: LMFields, row: dict, where: str) -> None:
    """Raise a SpartaError starting with `where` ("train.jsonl: line 7") if the row does not fit the format."""
    for col in required_columns(task):
        if col not in row:
            raise SpartaError(
                f"{where}: column {col!r} not found (format {task.format}); the row has "
                f"{', '.join(map(repr, row)) or 'no columns'}"
            )
    if task.format == MESSAGES:
        messages(row[task.messages_field], where, task.messages_field)
    elif task.format == PROMPT_COMPLETION:
        _text(row[task.prompt_field], where, task.prompt_field, empty_ok=True)
        _text(row[task.completion_field], where, task.completion_field, empty_ok=False)
    else:
        _text(row[task.text_field], where, task.text_field, empty_ok=False)


def conversation(task: LMFields, row: dict, where: str = "example") -> list[dict[str, str]]:
    """The row as a list of {"role", "content"} turns (raw: no system prompt added, nothing cleaned); a text row
    is an error (it is no conversation)."""
    if task.format == MESSAGES:
        return messages(_get(row, task.messages_field, where), where, task.messages_field)
    if task.format == PROMPT_COMPLETION:
        prompt = _text(_get(row, task.prompt_field, where), where, task.prompt_field, empty_ok=True)
        completion = _text(
            _get(row, task.completion_field, where), where, task.completion_field, empty_ok=False
        )
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    raise SpartaError(f"{where}: a {task.format!r} row has no conversation (format text is plain text)")


def text_of(task: LMFields, row: dict, where: str = "example") -> str:
    """The text of a ``text`` row."""
    return _text(_get(row, task.text_field, where), where, task.text_field, empty_ok=False)


def messages(
    value: object, where: str = "messages", column: str = "messages", *, training: bool = True
) -> list[dict[str, str]]:
    """Check a list of turns (or its JSON text, as a CSV cell holds it) and return it as {"role", "content"}
    dicts: every role one of ROLES, every content a string; for `training`, also assistant turns non-empty and
    at least one of them (a conversation to continue, as `sparta chat` renders, needs neither)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise SpartaError(
                f"{where}: column {column!r} is text that is not a JSON list of {{role, content}} turns"
            ) from None
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else "null" if value is None else type(value).__name__
        raise SpartaError(
            f"{where}: column {column!r} must be a non-empty list of {{role, content}} turns, got {got}"
        )
    out = []
    for i, turn in enumerate(value, 1):
        if not isinstance(turn, dict) or not {"role", "content"} <= set(turn):
            raise SpartaError(f"{where}: turn {i} of {column!r} must be a dict with 'role' and 'content'")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise SpartaError(
                f"{where}: turn {i} of {column!r} has role {role!r}; roles must be {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise SpartaError(
                f"{where}: turn {i} of {column!r} ({role}) has content of type {type(content).__name__}; "
                "content must be text"
            )
        if training and role == "assistant" and not content.strip():
            raise SpartaError(
                f"{where}: turn {i} of {column!r} is an empty assistant turn; drop the row or write the reply"
            )
        out.append({"role": role, "content": content})
    if training and not any(t["role"] == "assistant" for t in out):
        raise SpartaError(
            f"{where}: the conversation in {column!r} has no assistant turn; each example needs at least one "
            "(the assistant turns are what the model learns to write)"
        )
    return out


def _get(row: dict, column: str, where: str) -> object:
    if column not in row:
        raise SpartaError(f"{where}: column {column!r} not found; the row has {', '.join(map(repr, row))}")
    return row[column]


def _text(value: object, where: str, column: str, *, empty_ok: bool) -> str:
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise SpartaError(f"{where}: column {column!r} must be text, got {got}")
    if not empty_ok and not value.strip():
        raise SpartaError(f"{where}: column {column!r} is empty; drop the row or fill it in")
    return value
