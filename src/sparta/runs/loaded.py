"""Opening any directory a user holds into one loaded object, ready for `evaluate` and `predict`.

`open_model(path)` takes a training run (its adapter on a freshly loaded base model, or full fine-tuning's
model/), a merged multi-head model, an exported or any other transformers model directory, or a bare model name
(registry alias, hub id). A base checkpoint without a trained classification head gets the head training would
start from (the zero-shot label-word head of an instruct model, the seeded random head of a base model), so the
same commands show a model before and after training. Every kind becomes a `Loaded`: a model, its tokenizer and
the tasks it answers (`TaskHead`: the task and how its inputs are formatted), one for a run, several for a merge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from sparta.errors import SpartaError
from sparta.fileio import read_json
from sparta.methods import get_method
from sparta.models import (
    is_encoder,
    load_model,
    load_tokenizer,
    pick_device,
    quiet_transformers,
    resolve_model,
)
from sparta.objectives import get_objective
from sparta.runs.layout import ADAPTER_DIR, MODEL_DIR, RUN_FILE, TOKENIZER_DIR, kind_of
from sparta.runs.multihead import MultiHeadModel, read_merged
from sparta.tasks import TaskSpec, build_task, format_input


@dataclass
class TaskHead:
    """One task a loaded model answers, and how its inputs are formatted (as they were in training)."""

    name: str
    spec: TaskSpec
    instruct: bool
    template: str | None = None
    padding_side: str = "right"
    seed: int = 0  # the seed its splits were carved with (dev carve, eval subsets)
    known_data: bool = True  # False for a merged bare adapter: its task's data is unknown
    entry: dict[str, Any] = field(default_factory=dict)  # merged.json task entry (empty for a single run)


@dataclass
class Loaded:
    """A model opened by `open_model`: `kind` is "run", "merged", "model" (a trained classifier's directory, e.g.
    an export) or "base" (a base model with the head training starts from)."""

    kind: str
    model: nn.Module
    tokenizer: Any
    tasks: dict[str, TaskHead]
    info: dict[str, Any]  # run.json (runs, exports) or merged.json (merged models)
    device: torch.device
    objective: Any

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def head(self, name: str | None = None) -> TaskHead:
        """The task `name`, or the only task when none is named."""
        if name is None:
            if len(self.tasks) != 1:
                raise SpartaError(
                    f"this merged model answers several tasks; pass --task, one of {self._names()}"
                )
            return next(iter(self.tasks.values()))
        if name not in self.tasks:
            raise SpartaError(f"the merged model has no task {name!r}; its tasks: {self._names()}")
        return self.tasks[name]

    def _names(self) -> str:
        return ", ".join(self.tasks)

    @property
    def task(self) -> TaskSpec:
        """The spec of a single-task model's task."""
        return self.head().spec

    @property
    def padding_side(self) -> str:
        return self.head().padding_side

    @property
    def context(self) -> int | None:
        """The model's context length: evaluation and prediction inputs are truncated to it."""
        config = self.model.backbone.config if self.kind == "merged" else self.model.config
        return getattr(config, "max_position_embeddings", None)

    @property
    def encoder(self) -> bool:
        """A bidirectional encoder (sentence pairs encoded as pairs, truncated from the right)."""
        return self.kind != "merged" and is_encoder(self.model.config)

    def forward(self, tasks: list[str]) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """A function from model inputs to {task: logits}, one backbone pass for all of `tasks`."""
        if self.kind == "merged":
            return lambda batch: self.model(**batch, tasks=tasks)
        (name,) = tasks
        return lambda batch: {name: self.model(**batch).logits}


def open_model(
    path: str | Path, task: str | None = None, device: str | None = None, dtype: str | None = None
) -> Loaded:
    """Open a run dir, a merged dir, a model dir or a model name for inference (see the module docstring)."""
    kind = kind_of(path)
    if kind == "merged":
        return _open_merged(Path(path), device)
    if kind == "name" and Path(path).exists() and not Path(path).is_dir():
        raise SpartaError(f"{path} is not a directory; give a training output dir or a model dir")
    info = (
        read_json(Path(path) / RUN_FILE)
        if kind in ("run", "model") and (Path(path) / RUN_FILE).is_file()
        else {}
    )
    if kind == "name" and task is None:
        raise SpartaError(
            f"{path} is not a directory holding a run, a merged model or a model; to use a model name as a base "
            "model, pass --task"
        )
    dev, torch_dtype = pick_device(device, dtype)
    spec = _task_from(info, task)
    objective = get_objective(info.get("objective", "classification"))
    if kind == "run":
        model, tokenizer, instruct = _open_run(Path(path), info, spec, torch_dtype)
        loaded_kind = "run"
    else:
        model, tokenizer, instruct, fresh_head = _open_model_dir(
            str(path), info, spec, torch_dtype, objective
        )
        loaded_kind = "base" if fresh_head else "model"
    if tokenizer.pad_token_id is None:
        raise SpartaError(f"the tokenizer in {path} has no pad token")
    side = info.get("padding_side", "right")
    tokenizer.padding_side = side
    model.to(dev).eval()
    head = TaskHead(spec.name, spec, instruct, info.get("template"), side, info.get("seed", 0))
    return Loaded(
        loaded_kind, model, tokenizer, {spec.name: head}, {**info, "instruct": instruct}, dev, objective
    )


def _task_from(info: dict[str, Any], task: str | None) -> TaskSpec:
    if task is None:
        if "task" not in info:
            raise SpartaError("this model directory has no run.json naming its task; pass --task")
        return build_task(info["task"])
    args = dict(info.get("task") or {})
    return build_task(args if args.get("name") == task else {"name": task})


def _open_run(run_dir: Path, info: dict, spec: TaskSpec, dtype: torch.dtype) -> tuple[nn.Module, Any, bool]:
    """A training run: the method's files on a freshly loaded base model (full FT: the run's own model/)."""
    method = get_method(info.get("method", ""))
    if method.saves_model:
        return _open_model_dir(str(run_dir / MODEL_DIR), info, spec, dtype, None, tokenizer_dir=run_dir)[:3]
    try:
        resolved = resolve_model(info["model"])
    except SpartaError:  # e.g. a relative model dir given from another working directory
        resolved = resolve_model(info.get("model_path") or info["model"])
    with quiet_transformers():
        model = load_model(resolved, task="classification", num_labels=spec.num_labels, dtype=dtype)
    if not (run_dir / TOKENIZER_DIR).is_dir():
        raise SpartaError(f"{run_dir} has no {TOKENIZER_DIR}/ folder; is it a finished training run?")
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / TOKENIZER_DIR))
    model.config.pad_token_id = tokenizer.pad_token_id
    return method.load(model, run_dir / ADAPTER_DIR), tokenizer, info["instruct"]


def _open_model_dir(
    name: str,
    info: dict,
    spec: TaskSpec,
    dtype: torch.dtype,
    objective: Any,
    tokenizer_dir: Path | None = None,
) -> tuple[nn.Module, Any, bool, bool]:
    """(model, tokenizer, instruct, whether the head is new) of a model directory or name. Without a trained
    classification head (and without a run.json saying it has one) the head starts as it would in training
    (`objective` given: a base model, not a trained run)."""
    resolved = resolve_model(name)
    with quiet_transformers():
        model = load_model(resolved, task="classification", num_labels=spec.num_labels, dtype=dtype)
    tok_dir = (tokenizer_dir or Path(name)) / TOKENIZER_DIR
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir)) if tok_dir.is_dir() else load_tokenizer(resolved)
    model.config.pad_token_id = tokenizer.pad_token_id
    instruct = info.get("instruct", bool(getattr(resolved, "instruct", False)))
    fresh = objective is not None and not info and not _has_trained_head(resolved.path)
    if fresh:
        # the label tokens depend on where the prompt ends (its generation marker), not on its text
        example = dict.fromkeys(spec.text_fields, "")
        prompt = format_input(spec, example, tokenizer, instruct=True) if instruct else None
        objective.init_head(model, tokenizer, spec, instruct, prompt, resolved.path, seed=0)
    return model, tokenizer, instruct, fresh


def _has_trained_head(path: str) -> bool:
    try:
        architectures = AutoConfig.from_pretrained(path).architectures or []
    except (OSError, ValueError):
        return False
    return any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures)


def _open_merged(path: Path, device: str | None) -> Loaded:
    document = read_merged(path)
    dev, dtype = pick_device(device, None)
    model = MultiHeadModel.from_dir(path, dtype=dtype).to(dev)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tasks = {}
    for entry in document["tasks"]:
        spec = _merged_spec(entry)
        tasks[entry["name"]] = TaskHead(
            entry["name"], spec, entry["instruct"], entry["template"], entry["padding_side"],
            entry.get("seed") or 0, known_data=bool(entry.get("task")), entry=entry,
        )  # fmt: skip
    return Loaded("merged", model, tokenizer, tasks, document, dev, get_objective("classification"))


def _merged_spec(entry: dict[str, Any]) -> TaskSpec:
    if entry.get("task"):
        return dataclasses.replace(build_task(entry["task"]), name=entry["name"])
    names = tuple(entry["label_names"])
    return TaskSpec(
        entry["name"], len(names), ("text",), "label", names, names, "Classify the following text."
    )
