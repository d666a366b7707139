"""Fixtures for the tasks tests: the shared data folder and small synthetic data folders."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sparta.tasks.data import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _pair_rows(n: int, start: int = 0, num_labels: int = 2) -> list[dict]:
    return [
        {"sentence1": f"first {i}", "sentence2": f"second {i}", "label": i % num_labels, "idx": i}
        for i in range(start, start + n)
    ]


@pytest.fixture
def write_jsonl_gz():
    """``write_jsonl_gz(path, rows)`` writes a gzipped JSON Lines file."""
    return _write_jsonl_gz


@pytest.fixture
def pair_rows():
    """``pair_rows(n, start=0, num_labels=2)``: sentence-pair examples with ``idx`` start..start+n-1."""
    return _pair_rows


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    """A data folder with a synthetic RTE (200 train, 40 validation) and SST-2 (120 train, 30 validation)."""
    _write_jsonl_gz(tmp_path / "rte" / "train.jsonl.gz", _pair_rows(200))
    _write_jsonl_gz(tmp_path / "rte" / "validation.jsonl.gz", _pair_rows(40))
    sst = [{"sentence": f"text {i} ", "label": (i * 7) % 2, "idx": i} for i in range(120)]
    _write_jsonl_gz(tmp_path / "sst2" / "train.jsonl.gz", sst)
    _write_jsonl_gz(tmp_path / "sst2" / "validation.jsonl.gz", sst[:30])
    return tmp_path
