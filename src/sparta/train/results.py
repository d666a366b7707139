"""Run outputs: results.json, run.json, the CSV/TensorBoard log, and peak-memory measurement."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from sparta.errors import SpartaError

RESULTS_FILE = "results.json"
RUN_FILE = "run.json"
LOG_FILE = "log.csv"
TB_DIR = "tb"
TOKENIZER_DIR = "tokenizer"
RUN_FORMAT = 1
# Everything a training run writes; --overwrite clears these (and nothing else) first.
RUN_OUTPUTS = (RESULTS_FILE, RUN_FILE, LOG_FILE, TB_DIR, TOKENIZER_DIR, "adapter", "model")


def prepare_output(path: str | Path, overwrite: bool, resume: bool = False, create: bool = True) -> Path:
    """Check (and unless create=False, create) the output dir.

    A dir holding a finished run (results.json) is refused unless overwrite, which clears our files first; one
    holding checkpoints of an unfinished run is refused unless resume (continue it) or overwrite (start over).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SpartaError(f"output {out} exists and is not a directory")
    checkpoints = sorted(out.glob("checkpoint-*")) if out.is_dir() else []
    if resume:
        if (out / RESULTS_FILE).exists():
            raise SpartaError(f"{out} holds a finished run ({RESULTS_FILE}); there is nothing to resume")
        if not checkpoints:
            raise SpartaError(
                f"--resume: {out} holds no checkpoint-STEP/ folder; train with --save-every N first"
            )
        return out
    if (out / RESULTS_FILE).exists() and not overwrite:
        raise SpartaError(
            f"{out} already holds a finished run ({RESULTS_FILE}); pass --overwrite or pick another --output"
        )
    if checkpoints and not overwrite:
        raise SpartaError(
            f"{out} holds checkpoints of an unfinished run; pass --resume to continue it or --overwrite to start over"
        )
    if create:
        if overwrite:
            for target in [*(out / name for name in RUN_OUTPUTS), *checkpoints]:
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        out.mkdir(parents=True, exist_ok=True)
    return out


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on a CUDA device, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically: a temp file, flushed to disk, then renamed over `path`."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpartaError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SpartaError(f"{path} is not valid JSON: {err}") from None


class RunLogger:
    """Rows to OUTPUT/log.csv and scalars to OUTPUT/tb/ (TensorBoard, skipped when it is not installed)."""

    def __init__(
        self, output: Path, columns: list[str], tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        """resume_step: continue an existing log, dropping the rows logged after that step."""
        self.columns = columns
        kept: list[dict] = []
        if resume_step is not None and (output / LOG_FILE).is_file():
            with open(output / LOG_FILE, newline="") as f:
                kept = [
                    r
                    for r in csv.DictReader(f)
                    if r.get("step", "").isdigit() and int(r["step"]) <= resume_step
                ]
        self._file = open(output / LOG_FILE, "w", newline="")  # noqa: SIM115 - closed in close()
        self._csv = csv.DictWriter(self._file, fieldnames=columns, restval="", extrasaction="ignore")
        self._csv.writeheader()
        self._csv.writerows(kept)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(log_dir=str(output / TB_DIR), purge_step=purge)
            except ImportError:  # tensorboard is optional
                self._tb = None

    def log(self, row: dict[str, Any]) -> None:
        self._csv.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._file.flush()
        if self._tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key.replace("_", "/", 1), value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
