"""A copy of the v1 fixture (tests/fixtures/v1: run dirs written before the architecture change) whose recorded
absolute paths point at the copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1"


@pytest.fixture(scope="session")
def v1_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("v1") / "v1"
    shutil.copytree(FIXTURE, root)
    for file in root.rglob("*.json"):
        text = file.read_text()
        if "@FIXTURE@" in text:
            file.write_text(text.replace("@FIXTURE@", str(root)))
    return root
