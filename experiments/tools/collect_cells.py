"""Copy the finished grid cells (results.json present) of an output folder into the repository: their small files
(results.json, log.csv, run.json, cell.yaml, logs, em250/, the per-example scores examples/*.jsonl that
`sparta compare` pairs), never weights, checkpoints or tokenizers.

    python experiments/tools/collect_cells.py GRID_OUTPUT experiments/results/NAME
"""

import shutil
import sys
from pathlib import Path

KEEP = {".json", ".jsonl", ".csv", ".log", ".yaml"}
SKIP_DIRS = {"adapter", "model", "tokenizer", "tb"}


def skipped(rel: Path) -> bool:
    return any(p.startswith("checkpoint-") or p in SKIP_DIRS for p in rel.parts)


def copy(f: Path, src: Path, dst: Path) -> None:
    target = dst / f.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(f, target)


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    for results in src.rglob("results.json"):
        cell = results.parent
        if skipped(cell.relative_to(src)):
            continue
        for f in cell.rglob("*"):
            if f.is_file() and f.suffix in KEEP and not skipped(f.relative_to(src)):
                copy(f, src, dst)
        if cell.with_suffix(".log").is_file():  # the log a grid driver wrote beside the cell
            copy(cell.with_suffix(".log"), src, dst)


if __name__ == "__main__":
    main()
