"""Running a recipe's grid: one `sparta train` per cell into OUTPUT/<task>/<row>/seed<k>/, resumable.

A cell whose results.json exists is finished and skipped, so an interrupted grid resumes where it stopped (a
half-written cell, without results.json, is cleared and run again). Cells run in a subprocess by default: each
gets a fresh process, so its peak memory (the process's max RSS on CPU) and its wall time are its own, and a crash
or an out-of-memory kill loses one cell, not the grid. `isolation="process"` runs them in this process (tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sparta.errors import SpartaError
from sparta.experiments.recipes import (
    Cell,
    Recipe,
    estimate_seconds,
    expand,
    format_seconds,
    measured_speed_factor,
    resolve_budgets,
)
from sparta.runs.layout import RESULTS_FILE
from sparta.train.config import TrainConfig

CELL_LOG = "train.log"
MERGED_DIR = "merged"
_ENTRY = "import sys; from sparta.cli import main; sys.exit(main())"
_FLAG_BOOLS = {"zero_shot": "--no-zero-shot", "progress": "--no-progress"}


def train_argv(cfg: TrainConfig) -> list[str]:
    """The `sparta train` arguments that reproduce `cfg` (settings equal to the defaults are left out)."""
    if cfg.extra:
        raise SpartaError("recipe cells cannot carry `extra` settings through the command line")
    default = TrainConfig()
    argv: list[str] = []
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in ("extra",) or (
            value == getattr(default, f.name) and f.name not in ("task", "method", "seed")
        ):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in _FLAG_BOOLS:
            argv.append(_FLAG_BOOLS[f.name])
        elif f.name == "overwrite":
            argv.append(flag)
        elif isinstance(value, bool):
            argv += [flag, str(value).lower()]
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [
                flag,
                "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value),
            ]
    return argv


def command_line(argv: list[str]) -> str:
    import shlex

    return "sparta train " + " ".join(shlex.quote(a) for a in argv)


@contextlib.contextmanager
def cell_log(file: Path) -> Iterator[None]:
    """Inside the block, the `sparta` logger's records also go to `file` (an in-process cell's train.log)."""
    handler = logging.FileHandler(file)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("sparta")
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def is_done(path: Path) -> bool:
    return (path / RESULTS_FILE).is_file()


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    merged: list[str] = field(default_factory=list)
    missing_tasks: dict[str, str] = field(default_factory=dict)


def run_cell(
    cell: Cell, output: Path, isolation: str = "subprocess", train_fn: Callable | None = None
) -> None:
    """Train one cell into its directory (cleared first when a previous attempt left it half written)."""
    path = cell.directory(output)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    cfg = cell.config(output)
    if isolation == "process":
        if train_fn is None:
            from sparta.train import train as train_fn
        with cell_log(path / CELL_LOG):
            train_fn(cfg)
        return
    cmd = [sys.executable, "-c", _ENTRY, "train", *train_argv(cfg)]
    with open(path / CELL_LOG, "w") as log:
        log.write(command_line(cmd[4:]) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = (path / CELL_LOG).read_text().strip().splitlines()[-1:] or [""]
        raise SpartaError(f"exit code {rc}: {tail[0]} (see {path / CELL_LOG})")


def run_experiment(
    recipe: Recipe,
    scale: str,
    output: str | Path,
    *,
    model: str | None = None,
    seeds: list[int] | None = None,
    only: list[str] | None = None,
    tasks: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    dry_run: bool = False,
    isolation: str = "subprocess",
    train_fn: Callable | None = None,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Run (or, with dry_run, print) every cell of the recipe at `scale`, skipping finished ones."""
    output = Path(output)
    cells, missing = expand(
        recipe, scale, model=model, seeds=seeds, only=only, tasks=tasks, overrides=overrides
    )
    summary = RunSummary(missing_tasks=missing)
    for task, why in missing.items():
        log(f"skipping task {task}: its data is not available ({why})")
    try:
        resolve_budgets(cells, fetch=not dry_run)
    except (SpartaError, OSError, ValueError) as err:
        if not dry_run:
            raise
        log(f"note: budget densities are resolved at run time ({err})")
    tokens = recipe.scale(scale).get("tokens_per_example") or {}
    if dry_run:
        return _print_plan(recipe, scale, output, cells, tokens, summary, log)

    output.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if not is_done(c.directory(output))]
    summary.skipped = [c.key for c in cells if c not in todo]
    everything = (
        cells
        if not (only or tasks)
        else expand(recipe, scale, model=model, seeds=seeds, overrides=overrides)[0]
    )
    left, scaled = _estimate_left(everything, todo, output, tokens)
    log(f"{recipe.name} ({scale}): {len(cells)} cells, {len(summary.skipped)} finished, {len(todo)} to run "
        f"(estimate {format_seconds(left)} on CPU{scaled}); output {output}")  # fmt: skip
    for i, cell in enumerate(todo, 1):
        if is_done(cell.directory(output)):  # finished meanwhile by another `sparta reproduce` on this output
            summary.skipped.append(cell.key)
            log(f"[{i}/{len(todo)}] {cell.key}: finished meanwhile by another run, skipped")
            continue
        log(f"[{i}/{len(todo)}] {cell.key} ({cell.label})")
        t0 = time.perf_counter()
        try:
            run_cell(cell, output, isolation, train_fn)
        except SpartaError as err:
            summary.failed[cell.key] = str(err)
            log(f"  failed: {err}")
            continue
        summary.ran.append(cell.key)
        log(f"  done in {time.perf_counter() - t0:.0f} s")
    if recipe.kind == "merging":
        run_merges(recipe, scale, output, cells, summary, log)
    return summary


def _train_seconds(directory: Path) -> float | None:
    try:
        return float(json.loads((directory / RESULTS_FILE).read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _estimate_left(cells: list[Cell], todo: list[Cell], output: Path, tokens) -> tuple[float, str]:
    """Estimated seconds of the cells in `todo`, scaled by the measured speed of the finished ones among `cells`
    (the whole grid, not only the rows asked for) when there are any, and a note saying so ('' when unscaled)."""
    keys = {c.key for c in todo}
    done = [(c, _train_seconds(c.directory(output))) for c in cells if c.key not in keys]
    done = [(c, s) for c, s in done if s is not None]
    left = sum(estimate_seconds(c, tokens) for c in todo)
    factor = measured_speed_factor(done, tokens)
    if factor is None:
        return left, ""
    return left * factor, f", x{factor:.2f} as measured by {len(done)} finished cell{'s' * (len(done) > 1)}"


def _print_plan(recipe, scale, output, cells, tokens, summary, log) -> RunSummary:
    total = todo = 0.0
    log(f"# {recipe.name} at {scale} scale: {len(cells)} cells -> {output}")
    for cell in cells:
        done = is_done(cell.directory(output))
        seconds = estimate_seconds(cell, tokens)
        total += seconds
        todo += 0 if done else seconds
        (summary.skipped if done else summary.ran).append(cell.key)
        budget = ""
        if cell.budget is not None:
            budget = f", budget {cell.budget:g} -> density " + (
                f"{cell.settings['density']:.4g}" if "density" in cell.settings else "set at run time"
            )
        log(f"{cell.key} [{'done' if done else 'todo'}] {cell.label}{budget} ~{format_seconds(seconds)}")
        log(f"  {command_line(train_argv(cell.config(output)))}")
    for cmd in merge_commands(recipe, scale, output, cells):
        log(f"then: sparta {' '.join(cmd)}")
    log(f"estimated CPU time: {format_seconds(total)} for all cells, {format_seconds(todo)} for those left "
        f"(SmolLM2-135M fp32 CPU rates: ~3 ms per training token, ~1 ms per evaluated token; other models and "
        "GPUs differ)")  # fmt: skip
    left = [c for c in cells if not is_done(c.directory(output))]
    seconds, scaled = _estimate_left(cells, left, output, tokens)
    if scaled:
        log(f"  {format_seconds(seconds)} for those left{scaled}")
    return summary


# -- merging (paper section 8, Table 6) ----------------------------------------------------------------------------
def merge_commands(recipe: Recipe, scale: str, output: Path, cells: list[Cell]) -> list[list[str]]:
    """`sparta merge` argument lists, one per seed, for a merging recipe."""
    if recipe.kind != "merging":
        return []
    spec = recipe.merge
    row, tasks = spec["row"], spec.get("tasks") or recipe.tasks
    by_key = {c.key: c for c in cells}
    out = []
    for seed in sorted({c.seed for c in cells}):
        sources = [by_key.get(f"{t}/{row}/seed{seed}") for t in tasks]
        if any(s is None for s in sources):
            continue
        cmd = ["merge", *(str(s.directory(output)) for s in sources), "--output",
               str(output / MERGED_DIR / row / f"seed{seed}"), "--overwrite", "--eval",
               "--split", spec.get("split", "test")]  # fmt: skip
        cfg = sources[0].config(output)
        if cfg.max_eval_samples:
            cmd += ["--max-eval-samples", str(cfg.max_eval_samples)]
        if cfg.data_dir:
            cmd += ["--data-dir", str(cfg.data_dir)]
        if cfg.device:
            cmd += ["--device", cfg.device]
        out.append(cmd)
    return out


def run_merges(recipe: Recipe, scale: str, output: Path, cells: list[Cell], summary: RunSummary, log) -> None:
    from sparta.cli import main

    for cmd in merge_commands(recipe, scale, output, cells):
        sources, target = (
            [Path(p) for p in cmd[1 : cmd.index("--output")]],
            Path(cmd[cmd.index("--output") + 1]),
        )
        merged_json = target / "merged.json"
        if merged_json.is_file() and "eval" in json.loads(merged_json.read_text()):
            summary.skipped.append(str(target.relative_to(output)))
            continue
        if not all(is_done(s) for s in sources):
            log(f"not merging into {target}: some adapters did not finish")
            continue
        log(f"sparta {' '.join(cmd)}")
        if main(cmd) != 0:
            summary.failed[str(target.relative_to(output))] = "sparta merge failed"
        else:
            summary.merged.append(str(target.relative_to(output)))
