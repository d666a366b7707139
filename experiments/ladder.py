"""What the evidence drivers (gsm8k_sft.py, dpo_hh.py) share: running `sparta` cells that resume, choosing a
method's rate from a bracket of probes on dev loss, and keeping every cell of a table in one precision.

A cell is an output directory: finished when it holds results.json (then it is skipped), continued from its
newest checkpoint when it holds one. Every command runs with one thread (`OMP_NUM_THREADS=1`) and appends its
output to a log beside the cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# the rate ladder: probes step through it by about half a decade
LADDER = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def sparta(*args: str) -> list[str]:
    return [sys.executable, "-m", "sparta", *args]


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd[2:]) + "\n")
        out.flush()
        code = subprocess.call(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[2:])} failed with exit code {code}; see {log}")


def train(directory: Path, flags: list[str]) -> dict:
    """One training cell; resumed from its newest checkpoint when one exists."""
    results = directory / "results.json"
    if not results.is_file():
        resume = ["--resume"] if any(directory.glob("checkpoint-*")) else []
        run(sparta("train", *flags, "--output", str(directory), *resume), directory.with_suffix(".log"))
    return json.loads(results.read_text())


def lr_name(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def choose_rate(start: list[float], probe: Callable[[float], float], extra: int = 2) -> float:
    """Probe the `start` rates (`probe(lr)`: its dev loss), then, while the lowest dev loss sits at an end of the
    probed rates, the next rate of the ladder beyond it (at most `extra` more): the chosen rate then has a worse
    neighbour on each side, unless the ladder or the extra probes ran out."""
    dev: dict[float, float] = {}
    rates = list(start)
    for _ in range(len(rates) + extra):
        for lr in rates:
            if lr not in dev:
                dev[lr] = probe(lr)
        best = min(dev, key=dev.get)
        i = LADDER.index(best)
        below, above = LADDER[i - 1] if i else None, LADDER[i + 1] if i + 1 < len(LADDER) else None
        missing = [r for r in (below, above) if r is not None and r not in dev]
        if not missing or len(dev) >= len(start) + extra:
            return best
        rates.extend(missing)
    return min(dev, key=dev.get)


def check_precision(out: Path, asked: str) -> None:
    """Every cell of the table in one precision: stop before training when this machine would compute another
    (bf16-mixed falls back to fp32 on a CPU without bf16 instructions) or a finished cell recorded another."""
    from sparta.models import pick_device
    from sparta.precision import normalise, resolve

    wanted = normalise(asked)
    chosen = resolve(wanted, pick_device(None, None)[0])
    if chosen.name != wanted:
        raise SystemExit(
            f"this grid computes every cell in {wanted}, but this machine would not ({chosen.reason}); continue "
            f"it on a machine that computes {wanted}, or start a new output directory with --precision {chosen.name}"
        )
    for results in sorted(out.rglob("results.json")):
        recorded = (json.loads(results.read_text()).get("precision") or {}).get("name", "fp32")
        if recorded != wanted:
            raise SystemExit(f"{results} was computed in {recorded}, not {wanted}: one precision per table")
