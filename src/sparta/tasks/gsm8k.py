"""GSM8K (Cobbe et al., 2021): cleaning its worked answers for training, and reading a final number for scoring.

A GSM8K answer is a worked solution whose arithmetic carries calculator annotations, ``48/2 = <<48/2=24>>24``,
and ends with a line ``#### 72``. The annotations were a tool call for the original paper's calculator; a model
fine-tuned without that tool only learns to print them, so they are stripped from the targets unless the task
says ``keep_calculator=True``.

Exact match compares final numbers (:func:`answers_match`): :func:`extract_answer` takes the number after the
first ``####`` that is followed by one, else the last number of the text, and writes it canonically: commas
between digit groups, a ``$`` and a trailing ``.`` are dropped, ``-`` is kept, and ``72.50`` reads as ``72.5``,
``72.0`` as ``72``. So "#### $1,234." and "1234" match; a text with no number matches nothing.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

ANNOTATION = re.compile(r"<<[^<>]*>>")
MARKER = "####"
# a number: an optional minus and dollar sign (either order), digits with optional thousands commas ("1,234" is
# one number, "1,2" two), optional decimals; not starting inside another number ("5-3" is 5 and 3, not 5 and -3)
NUMBER = re.compile(r"(?<![\d.])(-?)(?:\$\s?)?(-?)(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?")


def strip_calculator(text: str) -> str:
    """The answer without its calculator annotations: "48/2 = <<48/2=24>>24" -> "48/2 = 24"."""
    return ANNOTATION.sub("", text)


def extract_answer(text: str) -> str | None:
    """The final number of a worked answer, canonical (see the module docstring); None if it has none."""
    for part in text.split(MARKER)[1:]:
        found = NUMBER.search(part)
        if found:
            return _canonical(found)
    last = None
    for last in NUMBER.finditer(text):  # noqa: B007 - the loop keeps the last match
        pass
    return _canonical(last) if last else None


def answers_match(prediction: str, reference: str) -> bool:
    """Whether the prediction's final number equals the reference's (False when either has none)."""
    want = extract_answer(reference)
    return want is not None and extract_answer(prediction) == want


def _canonical(match: re.Match) -> str | None:
    sign = "-" if match.group(1) or match.group(2) else ""
    digits = match.group(3).replace(",", "") + (match.group(4) or "")
    try:
        value = Decimal(sign + digits)
    except InvalidOperation:  # cannot happen for what NUMBER matches; kept as a guard
        return None
    if value == 0:
        value = Decimal(0)  # "-0" and "0.00" read as 0
    # normalize() drops trailing zeros ("72.50" -> 72.5); format "f" keeps "100" from becoming "1E+2"
    return format(value.normalize(), "f")
