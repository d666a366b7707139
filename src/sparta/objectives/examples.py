"""Per-example scores of an evaluation, for paired comparisons between runs.

A split's mean metric says how two runs differ; whether the difference is more than the luck of the test sample
needs each run's score on every example, paired by example (a paired bootstrap, `sparta.analysis.compare`). Each
objective's `evaluate` fills a list it is given (``records=``) with one dict per example in the split's order:
``index`` (position in the split), ``key`` (a hash of the example's token ids, so that two runs can be checked to
have scored the same examples) and the objective's scores (classification: correct, loss; language modelling:
nll, tokens, exact_match; preference: correct, margin, prefer; GRPO: correct, completion_length).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any


def example_key(*token_ids: Sequence[int]) -> str:
    """A short hash of an example's token-id lists: equal keys, the same encoded example."""
    digest = hashlib.sha1()
    for ids in token_ids:
        digest.update(",".join(map(str, ids)).encode())
        digest.update(b"|")
    return digest.hexdigest()[:12]


def gathered(records: list[dict[str, Any]], rt: Any = None) -> list[dict[str, Any]]:
    """Every process's records, in split order, on every process (one process: `records` sorted)."""
    if rt is not None and rt.distributed:
        records = [r for part in rt.gather(records) for r in part]
    return sorted(records, key=lambda r: r["index"])
