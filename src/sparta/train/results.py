"""Run outputs: results.json, run.json, the CSV/TensorBoard log, and peak-memory measurement."""

from __future__ import annotations

import csv
import json
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


def prepare_output(path: str | Path, overwrite: bool) -> Path:
    """Create the output dir; refuse one that holds a finished run unless overwrite (then clear our files)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SpartaError(f"output {out} exists and is not a directory")
    if (out / RESULTS_FILE).exists():
        if not overwrite:
            raise SpartaError(
                f"{out} already holds a finished run ({RESULTS_FILE}); pass --overwrite or pick another --output"
            )
        for name in RUN_OUTPUTS:
            target = out / name
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
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
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

    def __init__(self, output: Path, columns: list[str], tensorboard: bool = True) -> None:
        self.columns = columns
        self._file = open(output / LOG_FILE, "w", newline="")  # noqa: SIM115 - closed in close()
        self._csv = csv.DictWriter(self._file, fieldnames=columns, restval="", extrasaction="ignore")
        self._csv.writeheader()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(output / TB_DIR))
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
