"""What a run records as it goes: the CSV/TensorBoard log (OUTPUT/log.csv, OUTPUT/tb/) and its peak memory."""

from __future__ import annotations

import csv
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from sparta.runs.layout import LOG_FILE, TB_DIR


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on a CUDA device, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


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
            try:  # optional: tensorboard may not be installed
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
