"""Checks on a custom task's label column, so that a typo cannot silently become a class.

A class is whatever distinct value the label column holds, so one mistyped row ("entailmnet" among 0/1 labels)
would add a third class that trains and is scored without a word. Before the task is built:

* a column where some labels are integers and some are not is an error (the odd rows are named);
* a class with under `RARE_ROWS` training rows, or under `RARE_FRACTION` of them, is an error;
* a dev/test label that no training row has is an error.

Each message names the file, the line(s) and the values. Naming the classes (`label_names`, ``--labels``) or
`allow_rare_labels` (``--allow-rare-labels``) says the labels are meant as they are; see `check_label_columns`.
A training class missing from an evaluation split only warns (`warn_missing_eval_classes`): a small capped eval
sample (``--max-eval-samples``) can simply not have drawn it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sparta.errors import SpartaError

RARE_ROWS = 3  # a class needs at least this many training rows ...
RARE_FRACTION = 0.005  # ... and at least this fraction of them
_SHOWN = 5  # rows named in a message
NAME_HINT = "name the classes in id order with --labels (label_names=... in Python)"
RARE_HINT = "--allow-rare-labels (allow_rare_labels=True)"

log = logging.getLogger(__name__)


@dataclass
class LabelColumn:
    """One file's label values (unlabelled rows left out) and where each row is ("line 57")."""

    split: str  # train, dev or test
    path: str
    values: list[object]
    where: list[str]


def is_int(v: object) -> bool:
    """An int label, or a string that reads as one (CSV gives every value as a string)."""
    if isinstance(v, bool | int):
        return True
    return isinstance(v, str) and v.strip().lstrip("-").isdigit()


def _rows(where: list[str]) -> str:
    """'line 4', 'lines 4, 9, 12' or 'lines 4, 9, 12, 15, 20 and 3 more'."""
    if len(where) == 1:
        return where[0]
    unit = where[0].split(" ")[0]
    numbers = [w.split(" ", 1)[-1] for w in where[:_SHOWN]]
    more = f" and {len(where) - _SHOWN} more" if len(where) > _SHOWN else ""
    return f"{unit}s {', '.join(numbers)}{more}"


def unlabelled(v: object) -> bool:
    """A value marking an example without a label: null, empty, or a negative int (GLUE test splits use -1)."""
    return v is None or (isinstance(v, str) and not v.strip()) or (is_int(v) and int(v) < 0)


def check_values(
    path: str, column: str, values: list[object], valid: set[str], ints: bool, expected: str
) -> None:
    """Raise a SpartaError naming the file, the column and the label values that are not in `valid` (read as
    `sparta.tasks.data` reads them: by int value when `ints`, else as text)."""
    bad: dict[str, int] = {}
    for v in values:
        key = str(int(v)) if ints and is_int(v) else str(v)
        if key not in valid:
            shown = "null" if v is None else repr(v) if isinstance(v, str) and not v.strip() else key
            bad[shown] = bad.get(shown, 0) + 1
    if not bad:
        return
    shown = ", ".join(f"{k} ({n} row{'s' * (n > 1)})" for k, n in sorted(bad.items())[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    hint = (
        "-1, empty and null mark examples without a label (GLUE test splits use -1): drop those rows, or leave "
        "that file out (a test file needs labels to be scored); "
        if any(unlabelled(v) for v in values)
        else ""
    )
    raise SpartaError(
        f"{path}: column {column!r} holds labels {shown}{more} that are not {expected}; {hint}custom task "
        "labels must be ints 0..c-1 for c classes, or strings (each distinct string is one class)"
    )


def check_mixed_types(columns: list[LabelColumn]) -> None:
    """Raise when some labels are integers and others are not: the minority kind is named, row by row."""
    kinds = Counter(is_int(v) for c in columns for v in c.values)
    if len(kinds) < 2:
        return
    odd_is_int = kinds[True] < kinds[False]
    odd = [
        (c, v, w) for c in columns for v, w in zip(c.values, c.where, strict=True) if is_int(v) == odd_is_int
    ]
    common = sorted({str(v) for c in columns for v in c.values if is_int(v) != odd_is_int}, key=_order)
    first = odd[0][0]
    here = [(v, w) for c, v, w in odd if c is first]
    values = ", ".join(sorted({repr(v) for v, _ in here})[:_SHOWN])
    elsewhere = f" (and {len(odd) - len(here)} more row(s) in other files)" if len(odd) > len(here) else ""
    one = len(here) == 1
    kind = ("is " if one else "are ") + ("" if odd_is_int else "not ") + ("an integer" if one else "integers")
    rest = f"the other {sum(kinds.values()) - len(odd)} labels are{' not' if odd_is_int else ''}"
    raise SpartaError(
        f"{first.path}: {_rows([w for _, w in here])}: label{'' if one else 's'} {values} {kind}, while {rest} "
        f"({_list(common)}){elsewhere}. A typo would silently become a class of its own: fix the row(s), or "
        f"{NAME_HINT}"
    )


def check_unseen(columns: list[LabelColumn], key: Callable[[object], str]) -> None:
    """Raise when a dev/test label occurs in no training row."""
    seen = {key(v) for c in columns if c.split == "train" for v in c.values}
    for c in columns:
        if c.split == "train":
            continue
        new = [(key(v), w) for v, w in zip(c.values, c.where, strict=True) if key(v) not in seen]
        if new:
            values = ", ".join(sorted({repr(k) for k, _ in new}, key=_order)[:_SHOWN])
            raise SpartaError(
                f"{c.path}: {_rows([w for _, w in new])}: label(s) {values} never occur in the training data "
                f"(whose labels are {_list(sorted(seen, key=_order))}); a model cannot learn them. Fix the row(s), "
                f"pass {RARE_HINT}, or {NAME_HINT}"
            )


def check_rare(columns: list[LabelColumn], names: Sequence[str], key: Callable[[object], str]) -> None:
    """Raise when a class has under RARE_ROWS training rows or under RARE_FRACTION of them."""
    train = [
        (key(v), c.path, w)
        for c in columns
        if c.split == "train"
        for v, w in zip(c.values, c.where, strict=True)
    ]
    counts = Counter(k for k, _, _ in train)
    limit = max(RARE_ROWS, RARE_FRACTION * len(train))
    rare = [name for name in names if counts[name] < limit]
    if not rare:
        return
    name = min(rare, key=lambda n: counts[n])
    rows = [(path, w) for k, path, w in train if k == name]
    where = f"{rows[0][0]}: {_rows([w for _, w in rows])}: " if rows else ""
    n = counts[name]
    others = f" ({len(rare) - 1} other class(es) too)" if len(rare) > 1 else ""
    raise SpartaError(
        f"{where}class {name!r} has {n or 'no'} training row{'s' * (n != 1)} of {len(train)}{others}; a class "
        f"needs at least {RARE_ROWS} and {100 * RARE_FRACTION:g}% of them. A typo, or too few examples to learn: "
        f"fix or drop those rows, pass {RARE_HINT} to train it anyway, or {NAME_HINT}"
    )


def class_counts(names: Sequence[str], labels: Sequence[int]) -> str:
    """'negative 480, positive 476': each class with its number of examples (label ids index `names`)."""
    counts = Counter(labels)
    return ", ".join(f"{name} {counts[i]}" for i, name in enumerate(names))


def warn_missing_eval_classes(
    names: Sequence[str], splits: dict[str, list[dict]], capped: int | None = None
) -> list[str]:
    """Log a warning for each dev/test split that lacks a class the training split has; the warnings."""
    train = {ex["label"] for ex in splits.get("train", [])}
    out = []
    for split in ("dev", "test"):
        rows = splits.get(split) or []
        missing = sorted(train - {ex["label"] for ex in rows})
        if rows and missing:
            cap = f" (a sample of {capped}: --max-eval-samples)" if capped is not None else ""
            out.append(
                f"the {split} split{cap} has no example of class(es) {_list([names[i] for i in missing])}: "
                f"its metrics say nothing about them"
            )
            log.warning(out[-1])
    return out


def _list(values: Sequence[str]) -> str:
    shown = ", ".join(values[:8])
    return shown + (f", ... ({len(values)} in all)" if len(values) > 8 else "")


def _order(v: str) -> tuple:
    """Ints by value, then everything else as text."""
    text = v.strip("'")
    return (0, int(text), "") if is_int(text) else (1, 0, text)
