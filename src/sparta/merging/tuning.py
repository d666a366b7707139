"""Choosing a merge's per-task weights (and its rule's parameter) on the tasks' dev sets (`sparta merge
--tune-weights`).

Every candidate of a small grid (a weight per task from `weight_grid`; TIES's ``top_k`` or DARE's ``drop`` from
`param_grid`) is merged in memory and scored by the worst task's dev accuracy drop, in points, against that task's
single adapter; ties are broken by the mean drop, then by the distance of the weights from 1 (sum of |w - 1|),
then by grid order. No parameter is trained: the deltas and heads are the adapters' own, so this is merging
without re-fitting.

The base causal LM is loaded once. W0 is kept at the union of the adapters' positions, and each candidate writes
``W0 + merged`` there with the arithmetic `apply_strategy` uses (so a candidate's weights equal those of the merge
saved with its settings), into a multi-head model of that backbone and the tasks' heads wrapped as the `Loaded`
that `open_model` gives for a merged dir: the dev sets are encoded once and every candidate is evaluated by the
run layer's `evaluate_encoded`, the code `sparta eval` ends in, in the dtype it would use on that device. The
best candidate is then merged into the output dir; merged.json's "tuning" and ``tuning.csv`` hold the evidence.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparta.errors import SpartaError
from sparta.merging.merge import (
    Prepared,
    apply_strategy,
    open_sources,
    prepare_merge,
    task_entry,
    tokenizer_for,
    write_merged,
)
from sparta.merging.sources import AdapterSource, read_head
from sparta.merging.strategies import Strategy, merge_sparse
from sparta.models import pick_device
from sparta.runs import Loaded, MultiHeadModel, evaluate, open_model
from sparta.runs.inference import encode, evaluate_encoded
from sparta.runs.layout import HEADS_DIR, TUNING_FILE
from sparta.runs.loaded import merged_loaded
from sparta.tasks import load_splits

logger = logging.getLogger(__name__)

WEIGHT_GRID = (0.5, 0.75, 1.0, 1.25)
PARAM_GRIDS = {"ties": ("top_k", (0.1, 0.2, 0.5)), "dare": ("drop", (0.3, 0.5, 0.7))}
OBJECTIVE = (
    "smallest worst-task dev accuracy drop (points, against each task's single adapter); ties: smallest mean "
    "drop, then weights closest to 1 (sum of |w - 1|), then grid order"
)


def candidate_grid(
    strategy: Strategy, n: int, weight_grid=WEIGHT_GRID, param_grid=None
) -> list[tuple[list[float], Strategy]]:
    """Every (weights, strategy) pair to try: the weight grid per task times the rule's parameter grid."""
    weight_grid = [float(w) for w in weight_grid]
    if not weight_grid:
        raise SpartaError("--weight-grid needs at least one weight")
    param, default = PARAM_GRIDS.get(strategy.name, (None, ()))
    if param is None and param_grid is not None:
        raise SpartaError(
            f"--param-grid: --strategy {strategy.name} has no parameter to tune (ties and dare have)"
        )
    values = [float(v) for v in (default if param_grid is None else param_grid)]
    if param is not None and not values:
        raise SpartaError("--param-grid needs at least one value")
    rules = [dataclasses.replace(strategy, **{param: v}) for v in values] if param else [strategy]
    return [(list(w), rule) for rule in rules for w in itertools.product(weight_grid, repeat=n)]


class InMemoryMerge:
    """W0 at the union of the adapters' positions and the parameters candidates are written into."""

    def __init__(self, prep: Prepared, model: nn.Module):
        self.prep, self.model = prep, model
        self.union: dict[str, torch.Tensor] = {}
        self.w0: dict[str, torch.Tensor] = {}
        self.positions: list[dict[str, torch.Tensor]] = [{} for _ in prep.sparse]
        for name in sorted({n for sp in prep.sparse for n in sp}):
            flats = [sp[name][1] for sp in prep.sparse if name in sp]
            self.union[name] = union = torch.unique(torch.cat(flats))
            self.w0[name] = prep.backbone.get_parameter(name).detach().view(-1)[union].clone()
            for i, sp in enumerate(prep.sparse):
                if name in sp:
                    self.positions[i][name] = torch.searchsorted(union, sp[name][1])

    @torch.no_grad()
    def write(self, weights: list[float], strategy: Strategy) -> None:
        """Set the model's weights to this candidate's merge (float32 ``W0 + ...`` as `apply_strategy` computes
        it, then cast to the model's dtype)."""
        values = {name: w0.clone() for name, w0 in self.w0.items()}
        if strategy.name == "sum":
            for i, (sp, w) in enumerate(zip(self.prep.sparse, weights, strict=True)):
                for name, (_, _, deltas) in sp.items():
                    values[name].index_add_(0, self.positions[i][name], (w * deltas).to(torch.float32))
        else:
            for name, (union, merged) in merge_sparse(self.prep.sparse, weights, strategy).deltas.items():
                values[name].index_add_(0, torch.searchsorted(self.union[name], union), merged.float())
        for name, union in self.union.items():
            param = self.model.get_parameter(name)
            param.view(-1)[union.to(param.device)] = values[name].to(param.device, param.dtype)

    @torch.no_grad()
    def reset(self) -> None:
        """W0 back at every position in the float32 backbone."""
        for name, union in self.union.items():
            self.prep.backbone.get_parameter(name).view(-1)[union] = self.w0[name]


def _check_tunable(sources: list[AdapterSource]) -> None:
    for s in sources:
        if s.causal_lm:
            raise SpartaError(
                f"--tune-weights scores classifier merges by their tasks' dev accuracy; {s.name} is a "
                "language-modelling (SFT) adapter: merge SFT adapters with --weights"
            )
        if s.run_dir is None:
            raise SpartaError(
                f"--tune-weights needs training dirs (their tasks' dev data); {s.path} is a bare adapter dir"
            )


def _loaded_in_memory(prep: Prepared, device: str | None) -> tuple[Loaded, nn.Module]:
    """The candidates' `Loaded` (kind "merged") and the causal LM it reads: the float32 backbone itself on the
    CPU, else a copy in the device's evaluation dtype (as `open_model` would load a merged dir there)."""
    dev, dtype = pick_device(device, None)
    lm = prep.backbone
    if dev.type != "cpu" or dtype != torch.float32:
        lm = copy.deepcopy(prep.backbone).to(dev, dtype)
    tokenizer = tokenizer_for(prep.sources[0], prep.resolved)
    entries = [task_entry(s, 1.0, f"{HEADS_DIR}/{s.name}.safetensors") for s in prep.sources]
    heads = {}
    for s in prep.sources:
        tensors = read_head(s)
        weight = tensors["weight"]
        heads[s.name] = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors)
        heads[s.name].load_state_dict(tensors)
    model = MultiHeadModel(lm.base_model, heads, tokenizer.pad_token_id).to(dtype)
    document = {"tasks": entries, "pad_token_id": tokenizer.pad_token_id}
    return merged_loaded(model, tokenizer, document, dev), lm


def _single_dev(sources, data_dir, max_eval_samples, batch_size, device) -> dict[str, dict[str, float]]:
    """Each task's single adapter on its dev set (the reference for the drops)."""
    out = {}
    for s in sources:
        run = open_model(s.run_dir, device=device)
        out[s.name] = evaluate(run, None, "dev", data_dir, max_eval_samples, batch_size)
        del run
    return out


def _score(row: dict[str, Any]) -> tuple:
    return (row["worst_drop"], row["mean_drop"], row["distance_from_1"])


def tune_merge(
    adapters: list[str | Path],
    output: str | Path,
    *,
    strategy: Strategy | None = None,
    weight_grid=WEIGHT_GRID,
    param_grid=None,
    names: list[str] | None = None,
    model: str | None = None,
    overwrite: bool = False,
    data_dir: str | None = None,
    max_eval_samples: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
) -> dict[str, Any]:
    """Merge classifier adapters with the grid's best weights (and parameter) on dev; returns merged.json's
    document, whose "tuning" holds every candidate's per-task dev accuracy and drop (also in tuning.csv)."""
    strategy = strategy or Strategy()
    sources = open_sources(adapters, names)
    _check_tunable(sources)
    grid = candidate_grid(strategy, len(sources), weight_grid, param_grid)
    prep = prepare_merge(sources, output, model=model, overwrite=overwrite)
    single = _single_dev(sources, data_dir, max_eval_samples, batch_size, device)
    loaded, lm = _loaded_in_memory(prep, device)
    memory = InMemoryMerge(prep, lm)
    data = {}
    for name, head in loaded.tasks.items():
        splits = load_splits(head.spec, data_dir, seed=head.seed, max_eval_samples=max_eval_samples)
        data[name] = encode(loaded, name, splits["dev"])
    param = PARAM_GRIDS.get(strategy.name, (None,))[0]
    rows, started = [], time.perf_counter()
    for k, (weights, rule) in enumerate(grid):
        memory.write(weights, rule)
        accuracy = {n: evaluate_encoded(loaded, n, d, batch_size)["accuracy"] for n, d in data.items()}
        drops = {n: 100 * (single[n]["accuracy"] - a) for n, a in accuracy.items()}
        rows.append(
            {
                "weights": dict(zip(prep.names, weights, strict=True)),
                **({param: getattr(rule, param)} if param else {}),
                "accuracy": accuracy,
                "drop": drops,
                "worst_drop": max(drops.values()),
                "mean_drop": sum(drops.values()) / len(drops),
                "distance_from_1": sum(abs(w - 1) for w in weights),
            }
        )
        logger.info(f"  candidate {k + 1}/{len(grid)}: " + _describe(rows[-1], param))
    seconds = (time.perf_counter() - started) / len(grid)
    best = min(range(len(rows)), key=lambda i: (*_score(rows[i]), i))
    weights, rule = grid[best]
    del loaded, lm
    memory.reset()
    apply_strategy(prep.backbone, prep.sparse, weights, rule)
    tuning = {
        "split": "dev",
        "max_eval_samples": max_eval_samples,
        "objective": OBJECTIVE,
        "weight_grid": [float(w) for w in weight_grid],
        "parameter": param,
        "parameter_grid": list(dict.fromkeys(getattr(r, param) for _, r in grid)) if param else None,
        "dev_examples": {n: len(d.labels) for n, d in data.items()},
        "single": single,
        "candidates": rows,
        "chosen": best,
        "seconds_per_candidate": round(seconds, 3),
    }
    _write_csv(prep.output / TUNING_FILE, rows, prep.names, param, best)
    return write_merged(prep, weights, rule, {"tuning": tuning})


def _describe(row: dict[str, Any], param: str | None) -> str:
    weights = ",".join(f"{w:g}" for w in row["weights"].values())
    tasks = ", ".join(f"{n} {100 * a:.1f}% (drop {row['drop'][n]:.1f})" for n, a in row["accuracy"].items())
    extra = f" {param} {row[param]:g}" if param else ""
    return f"weights {weights}{extra}: {tasks}; worst drop {row['worst_drop']:.2f}"


def _write_csv(path: Path, rows: list[dict], names: list[str], param: str | None, best: int) -> None:
    header = [
        "candidate",
        *([param] if param else []),
        *(f"weight_{n}" for n in names),
        *(f"dev_accuracy_{n}" for n in names),
        *(f"drop_{n}" for n in names),
        "worst_drop",
        "mean_drop",
        "chosen",
    ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for k, row in enumerate(rows):
            writer.writerow(
                [
                    k,
                    *([row[param]] if param else []),
                    *(row["weights"][n] for n in names),
                    *(f"{row['accuracy'][n]:.6f}" for n in names),
                    *(f"{row['drop'][n]:.4f}" for n in names),
                    f"{row['worst_drop']:.4f}",
                    f"{row['mean_drop']:.4f}",
                    int(k == best),
                ]
            )
