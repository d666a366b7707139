"""Running a recipe's grid: one training run per cell into OUTPUT/<task>/<row>/seed<k>/, resumable.

Each cell's settings are written to its directory as `cell.yaml` (every TrainConfig field, `extra` included) and
the run reads them from there: in a subprocess by default (`python -m sparta.train cell.yaml`, the library's entry
point: the same run as `sparta train --config cell.yaml`), so its peak memory (the process's max RSS on CPU) and
its wall time are its own, and a crash or an out-of-memory kill loses one cell, not the grid;
`isolation="process"` runs it in this process (tests). A cell whose results.json exists is finished and
skipped, so an interrupted grid resumes where it stopped; a half-written cell (no results.json) continues from
its newest checkpoint when the recipe sets `save_every` and its settings are unchanged, else it is cleared and run
again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparta.errors import SpartaError
from sparta.experiments.merges import merge_plans, run_merges
from sparta.experiments.recipes import (
    Cell,
    Recipe,
    estimate_seconds,
    expand,
    format_seconds,
    measured_speed_factor,
    resolve_budgets,
)
from sparta.fileio import atomic_file, read_json
from sparta.models import pick_device
from sparta.precision import resolve as resolve_precision
from sparta.runs.layout import RESULTS_FILE
from sparta.train.checkpoint import latest_checkpoint
from sparta.train.config import TrainConfig, load_yaml

logger = logging.getLogger(__name__)
CELL_LOG = "train.log"
CELL_CONFIG = "cell.yaml"


def command_line(cfg: TrainConfig) -> str:
    """The `sparta train` command of a config, for people to read (`extra` has no flag: noted instead)."""
    try:
        flags = dataclasses.replace(cfg, extra={}).to_argv()
    except SpartaError as err:  # a value no flag can express: the cell's YAML file carries it
        return f"sparta train --config {CELL_CONFIG}  # ({err})"
    return "sparta train " + shlex.join(flags) + (f"  # + extra: {cfg.extra}" if cfg.extra else "")


def write_cell_config(cfg: TrainConfig, path: Path) -> Path:
    """`cfg` as YAML at `path` (written whole), read back by `python -m sparta.train` / `sparta train --config`."""
    with atomic_file(path) as tmp:
        tmp.write_text(
            f"# one grid cell; `sparta train --config {path.name}` runs it again\n" + cfg.to_yaml()
        )
    return path


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


def resumable(path: Path, cfg: TrainConfig) -> bool:
    """Whether a half-finished cell in `path` can continue from its newest checkpoint: it has one, and its
    cell.yaml holds the same settings as `cfg` (a changed recipe starts the cell again)."""
    if latest_checkpoint(path) is None or not (path / CELL_CONFIG).is_file():
        return False
    try:
        before = TrainConfig.from_dict(load_yaml(path / CELL_CONFIG), source=str(path / CELL_CONFIG))
    except SpartaError:
        return False
    return dataclasses.replace(before, resume=None) == dataclasses.replace(cfg, resume=None)


def run_cell(
    cell: Cell, output: Path, isolation: str = "subprocess", train_fn: Callable | None = None
) -> None:
    """Train one cell into its directory. A previous attempt that left a checkpoint (`save_every` in the
    recipe) with the same settings continues from it; any other half-written directory is cleared first."""
    path = cell.directory(output)
    cfg = cell.config(output)
    resume = resumable(path, cfg)
    if path.exists() and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    if resume:
        cfg = dataclasses.replace(cfg, resume=True)
        logger.info(f"  resuming from {latest_checkpoint(path)}")
    config = write_cell_config(cfg, path / CELL_CONFIG)
    mode = "a" if resume else "w"  # a resumed cell's train.log keeps the lines of its first attempt
    if isolation == "process":
        if train_fn is None:
            from sparta.train import train as train_fn
        cfg = TrainConfig.from_dict(load_yaml(config), source=str(config))
        with open(path / CELL_LOG, mode) as log:
            print(f"sparta train --config {shlex.quote(str(config))}", file=log, flush=True)
        with cell_log(path / CELL_LOG):
            train_fn(cfg)
        return
    cmd = [sys.executable, "-m", "sparta.train", str(config)]
    with open(path / CELL_LOG, mode) as log:
        log.write(f"sparta train --config {shlex.quote(str(config))}\n")
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
) -> RunSummary:
    """Run (or, with dry_run, print) every cell of the recipe at `scale`, skipping finished ones."""
    output = Path(output)
    cells, missing = expand(
        recipe, scale, model=model, seeds=seeds, only=only, tasks=tasks, overrides=overrides
    )
    summary = RunSummary(missing_tasks=missing)
    for task, why in missing.items():
        logger.info(f"skipping task {task}: its data is not available ({why})")
    try:
        resolve_budgets(cells, fetch=not dry_run)
    except (SpartaError, OSError, ValueError) as err:
        if not dry_run:
            raise
        logger.info(f"note: budget densities are resolved at run time ({err})")
    tokens = recipe.scale(scale).get("tokens_per_example") or {}
    if dry_run:
        return _print_plan(recipe, scale, output, cells, tokens, summary)

    output.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if not is_done(c.directory(output))]
    check_one_precision(cells, todo, output)
    summary.skipped = [c.key for c in cells if c not in todo]
    everything = (
        cells
        if not (only or tasks)
        else expand(recipe, scale, model=model, seeds=seeds, overrides=overrides)[0]
    )
    left, scaled = _estimate_left(everything, todo, output, tokens)
    logger.info(
        f"{recipe.name} ({scale}): {len(cells)} cells, {len(summary.skipped)} finished, {len(todo)} to run "
        f"(estimate {format_seconds(left)} on CPU{scaled}); output {output}"
    )
    for i, cell in enumerate(todo, 1):
        if is_done(cell.directory(output)):  # finished meanwhile by another `sparta reproduce` on this output
            summary.skipped.append(cell.key)
            logger.info(f"[{i}/{len(todo)}] {cell.key}: finished meanwhile by another run, skipped")
            continue
        logger.info(f"[{i}/{len(todo)}] {cell.key} ({cell.label})")
        t0 = time.perf_counter()
        try:
            run_cell(cell, output, isolation, train_fn)
        except SpartaError as err:
            summary.failed[cell.key] = str(err)
            logger.info(f"  failed: {err}")
            continue
        summary.ran.append(cell.key)
        logger.info(f"  done in {time.perf_counter() - t0:.0f} s")
    if recipe.kind == "merging":
        run_merges(recipe, scale, output, cells, summary)
    return summary


def finished_precision(directory: Path) -> str:
    """The precision a finished cell computed in (results.json; cells from before mixed precision: fp32)."""
    try:
        recorded = read_json(directory / RESULTS_FILE).get("precision") or {}
    except (SpartaError, AttributeError):
        return "fp32"
    return recorded.get("name", "fp32") if isinstance(recorded, dict) else str(recorded)


def check_one_precision(cells: list[Cell], todo: list[Cell], output: Path) -> None:
    """Every cell of one grid computes in one precision, so that its table compares methods, not number formats.

    The cells left to run are resolved on this machine as their runs will resolve them (`sparta.precision`: a
    bf16-mixed cell falls back to fp32 on a CPU without bf16 instructions); together with the finished cells'
    recorded precisions they must name one precision, else the grid stops before training anything."""
    found: dict[str, str] = {}
    for cell in cells:
        if cell not in todo:
            found.setdefault(finished_precision(cell.directory(output)), f"finished cell {cell.key}")
    for cell in todo:
        cfg = cell.config(output)
        chosen = resolve_precision(cfg.precision, pick_device(cfg.device, cfg.dtype)[0])
        found.setdefault(chosen.name, f"cell {cell.key} on this machine ({chosen.reason})")
    if len(found) > 1:
        seen = "; ".join(f"{name}: {where}" for name, where in found.items())
        raise SpartaError(
            f"the cells of {output} would mix precisions ({seen}); a table compares methods in one precision: "
            "continue this grid on a machine that computes its finished cells' precision, or start it in a new "
            "output directory with the precision set (--set precision=fp32)"
        )


def _train_seconds(directory: Path) -> float | None:
    try:
        return float(read_json(directory / RESULTS_FILE)["train_seconds"])
    except (SpartaError, KeyError, TypeError, ValueError):
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


def _print_plan(recipe, scale, output, cells, tokens, summary) -> RunSummary:
    total = todo = 0.0
    logger.info(f"# {recipe.name} at {scale} scale: {len(cells)} cells -> {output}")
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
        logger.info(
            f"{cell.key} [{'done' if done else 'todo'}] {cell.label}{budget} ~{format_seconds(seconds)}"
        )
        logger.info(f"  {command_line(cell.config(output))}")
    for plan in merge_plans(recipe, scale, output, cells):
        logger.info(f"then: {plan.command()}")
    logger.info(
        f"estimated CPU time: {format_seconds(total)} for all cells, {format_seconds(todo)} for those left "
        f"(SmolLM2-135M fp32 CPU rates: ~3 ms per training token, ~1 ms per evaluated token; other models and "
        "GPUs differ)"
    )
    left = [c for c in cells if not is_done(c.directory(output))]
    seconds, scaled = _estimate_left(cells, left, output, tokens)
    if scaled:
        logger.info(f"  {format_seconds(seconds)} for those left{scaled}")
    return summary
