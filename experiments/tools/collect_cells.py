"""Copy the finished grid cells (results.json present) of an output folder into the repository: their small files
(results.json, log.csv, run.json, cell.yaml, logs, em250/), never weights, checkpoints or tokenizers.

    python experiments/tools/collect_cells.py GRID_OUTPUT experiments/results/NAME
"""
import shutil, sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
KEEP = {".json", ".csv", ".log", ".yaml", ".out"}
SKIP_DIRS = {"adapter", "model", "tokenizer", "tb"}
for results in src.rglob("results.json"):
    cell = results.parent
    if any(p.startswith("checkpoint-") or p in SKIP_DIRS for p in cell.relative_to(src).parts):
        continue
    for f in cell.rglob("*"):
        rel = f.relative_to(src)
        if f.is_file() and f.suffix in KEEP and not any(p.startswith("checkpoint-") or p in SKIP_DIRS for p in rel.parts):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst / rel)
    log = cell.with_suffix(".log")
    if log.is_file():
        (dst / log.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, dst / log.relative_to(src))
