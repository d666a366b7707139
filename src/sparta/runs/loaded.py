"""Opening any directory a user holds into one loaded object, ready for `evaluate` and `predict`.

`open_model(path)` takes a training run (its adapter on a freshly loaded base model, or full fine-tuning's
model/), a merged multi-head model, an exported or any other transformers model directory, or a bare model name
(registry alias, hub id). A base checkpoint without a trained classification head gets the head training would
start from (the zero-shot label-word head of an instruct model, the seeded random head of a base model), so the
same commands show a model before and after training. Every kind becomes a `Loaded`: a model, its tokenizer and
the tasks it answers (`TaskHead`: the task and how its inputs are formatted), one for a run, several for a merge.
A language-modelling (SFT) run, export or merge opens as a causal LM (`sparta.runs.causal`); so does a base
model asked for with `objective="language-modelling"` (generation), which needs no task. A directory of adapter
files alone (no run.json) is refused with what it looks like, what is wrong with it and which run to pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer

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
from sparta.precision import Precision, autocast
from sparta.precision import resolve as resolve_precision
from sparta.runs.causal import (
    LANGUAGE_MODELLING,
    base_model_of,
    has_trained_head,
    is_causal_lm,
    open_causal_dir,
    open_causal_run,
    with_pad_token,
)
from sparta.runs.layout import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    MODEL_CONFIG,
    MODEL_DIR,
    RUN_FILE,
    TOKENIZER_DIR,
    kind_of,
)
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
    precision: Precision | None = None  # what its forwards compute in (`open_model` sets it; None: fp32)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def head(self, name: str | None = None) -> TaskHead:
        """The task `name`, or the only task when none is named."""
        if not self.tasks:
            raise SpartaError("this model was opened without a task; pass --task")
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
        config = self.model.backbone.config if isinstance(self.model, MultiHeadModel) else self.model.config
        return getattr(config, "max_position_embeddings", None)

    @property
    def causal_lm(self) -> bool:
        """A causal LM (an SFT run, an exported or merged one, a base model opened for generation)."""
        return self.objective.model_kind == "causal-lm"

    @property
    def instruct(self) -> bool:
        """Whether inputs go through the chat template (as they did in training)."""
        return bool(self.info.get("instruct"))

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

    def autocast(self):  # noqa: ANN201
        """The context every forward of this model runs in: autocast for a mixed precision (`sparta.precision`)."""
        return autocast(self.precision, self.device)


def open_model(
    path: str | Path,
    task: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    objective: str | None = None,
    precision: str | None = None,
) -> Loaded:
    """Open a run dir, a merged dir, a model dir or a model name for inference (see the module docstring).

    `objective` asks for one kind of model: "language-modelling" (generation) opens a base model name or directory
    as a causal LM without a task, and refuses a classification run, merge or classifier with a clear error.
    `precision` (fp32, bf16-mixed, fp16-mixed): what its forwards compute in; by default the precision the run
    was trained in (run.json; a merged model: its adapters', merged.json), else the device's default (`sparta.precision.resolve`)."""
    loaded = _open(path, task, device, dtype, objective)
    loaded.precision = resolve_precision(precision or loaded.info.get("precision"), loaded.device)
    return loaded


def _open(
    path: str | Path, task: str | None, device: str | None, dtype: str | None, objective: str | None
) -> Loaded:
    kind = kind_of(path)
    if kind == "merged":
        return _open_merged(Path(path), device, dtype, objective)
    if kind == "adapter":
        raise _adapter_dir_error(Path(path))
    if kind == "name" and Path(path).exists() and not Path(path).is_dir():
        raise SpartaError(f"{path} is not a directory; give a training output dir or a model dir")
    info = (
        read_json(Path(path) / RUN_FILE)
        if kind in ("run", "model") and (Path(path) / RUN_FILE).is_file()
        else {}
    )
    # a causal LM (asked for, or what the run trained): a task is optional
    generating = (objective is not None and is_causal_lm(objective)) or (
        bool(info) and is_causal_lm(info.get("objective"))
    )
    if kind == "name" and task is None and not generating:
        raise SpartaError(
            f"{path} is not a directory holding a run, a merged model or a model; to use a model name as a base "
            "model, pass --task"
        )
    dev, torch_dtype = pick_device(device, dtype)
    if info:  # a run or export records its objective (runs from before SFT: classification)
        _check_objective(path, info.get("objective", "classification"), objective)
    spec = _task_from(info, task) if task is not None or info.get("task") or not generating else None
    found = get_objective(_objective_name(path, info, spec, objective))
    if found.model_kind == "causal-lm":
        return _open_causal(path, kind, info, spec, found, dev, torch_dtype)
    if kind == "run":
        model, tokenizer, instruct = _open_run(Path(path), info, spec, torch_dtype)
        loaded_kind = "run"
    else:
        model, tokenizer, instruct, fresh_head = _open_model_dir(str(path), info, spec, torch_dtype, found)
        loaded_kind = "base" if fresh_head else "model"
    if tokenizer.pad_token_id is None:
        raise SpartaError(f"the tokenizer in {path} has no pad token")
    side = info.get("padding_side", "right")
    tokenizer.padding_side = side
    model.to(dev).eval()
    head = TaskHead(spec.name, spec, instruct, info.get("template"), side, info.get("seed", 0))
    return Loaded(
        loaded_kind, model, tokenizer, {spec.name: head}, {**info, "instruct": instruct}, dev, found
    )


def _adapter_dir_error(path: Path) -> SpartaError:
    """Why a directory of adapter files alone does not open: what it looks like, what is wrong with it (a
    missing or corrupt adapter config, with the line and column of the JSON error), and what to pass instead."""
    present = ", ".join(n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if (path / n).is_file())
    looks = f"{path} looks like an adapter directory ({present}; no {RUN_FILE} or {MODEL_CONFIG})"
    run = path.parent if path.name == ADAPTER_DIR and (path.parent / RUN_FILE).is_file() else None
    instead = (
        f"pass the training run {run} that holds it"
        if run
        else f"pass the training run it was saved in ({RUN_FILE} beside {ADAPTER_DIR}/), a merged model or a "
        "model directory"
    )
    try:
        read_json(path / ADAPTER_CONFIG, "its adapter config")
    except SpartaError as err:
        return SpartaError(f"{looks}, but {err}; repair or save the adapter again, or {instead}")
    return SpartaError(
        f"{looks}: an adapter alone records no task or input format to open it with; {instead}"
    )


def _objective_name(path: str | Path, info: dict, spec: TaskSpec | None, wanted: str | None) -> str:
    """The objective of what is at `path`: run.json's (runs before SFT: classification), else the task's."""
    if info:
        found = info.get("objective", "classification")
    else:
        found = getattr(spec, "objective", "classification") if spec is not None else wanted
    return _check_objective(path, found or "classification", wanted)


def _check_objective(path: str | Path, found: str, wanted: str | None) -> str:
    """`found`, when it builds the kind of model `wanted` asks for (any causal-LM objective for a causal LM)."""
    if wanted is not None and get_objective(found).model_kind != get_objective(wanted).model_kind:
        raise SpartaError(
            f"{path} holds a {found} model, not a {wanted} one (an SFT run, an exported or merged causal LM, or "
            "a base model)"
        )
    return found


def _open_causal(path, kind: str, info: dict, spec: TaskSpec | None, objective, dev, dtype) -> Loaded:
    """A causal LM (see `sparta.runs.causal`), with the run's task and input format when it has them."""
    if kind == "run":
        model, tokenizer = open_causal_run(Path(path), info, dtype)
        instruct = bool(info.get("instruct"))
    else:
        model, tokenizer, found = open_causal_dir(str(path), dtype)
        instruct = bool(info.get("instruct", found))
    model.to(dev).eval()
    loaded_kind = "run" if kind == "run" else "model" if info else "base"
    return _causal_loaded(loaded_kind, model, tokenizer, info, spec, instruct, dev, objective)


def _causal_loaded(
    kind: str,
    model: nn.Module,
    tokenizer: Any,
    info: dict,
    spec: TaskSpec | None,
    instruct: bool,
    dev,
    objective,
) -> Loaded:
    side = info.get("padding_side", "right")
    tokenizer.padding_side = side
    heads = {}
    if spec is not None:
        heads[spec.name] = TaskHead(
            spec.name, spec, instruct, info.get("template"), side, info.get("seed", 0)
        )
    return Loaded(kind, model, tokenizer, heads, {**info, "instruct": instruct}, dev, objective)


def view_of_run(
    run_dir: str | Path, model: nn.Module, device: torch.device, precision: str | None = None
) -> Loaded:
    """The `Loaded` of an SFT run around a `model` already in memory (the run's tokenizer, task, chat format and
    precision; its weights not read): how a server holding one base model and many adapters of it renders each
    adapter's prompts exactly as `open_model(run_dir)` would. The caller makes the run's adapter live."""
    run_dir = Path(run_dir)
    if kind_of(run_dir) != "run":
        raise SpartaError(
            f"{run_dir} is not a training run (no {RUN_FILE} with an {ADAPTER_DIR}/ or {MODEL_DIR}/)"
        )
    info = read_json(run_dir / RUN_FILE)
    found = _check_objective(run_dir, info.get("objective", "classification"), LANGUAGE_MODELLING)
    if not (run_dir / TOKENIZER_DIR).is_dir():
        raise SpartaError(f"{run_dir} has no {TOKENIZER_DIR}/ folder; is it a finished training run?")
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(str(run_dir / TOKENIZER_DIR)))
    spec = _task_from(info, None) if info.get("task") else None
    objective = get_objective(found)
    loaded = _causal_loaded(
        "run", model, tokenizer, info, spec, bool(info.get("instruct")), device, objective
    )
    loaded.precision = resolve_precision(precision or info.get("precision"), device)
    return loaded


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
    resolved = base_model_of(info)
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
    fresh = objective is not None and not info and not has_trained_head(resolved.path)
    if fresh:
        # the label tokens depend on where the prompt ends (its generation marker), not on its text
        example = dict.fromkeys(spec.text_fields, "")
        prompt = format_input(spec, example, tokenizer, instruct=True) if instruct else None
        objective.init_head(model, tokenizer, spec, instruct, prompt, resolved.path, seed=0)
    return model, tokenizer, instruct, fresh


def _open_merged(path: Path, device: str | None, dtype: str | None, objective: str | None) -> Loaded:
    document = read_merged(path)
    found = get_objective(_check_objective(path, document.get("objective", "classification"), objective))
    dev, torch_dtype = pick_device(device, dtype)
    if found.model_kind == "causal-lm":
        return _open_merged_causal(path, document, found, dev, torch_dtype)
    model = MultiHeadModel.from_dir(path, dtype=torch_dtype)
    return merged_loaded(model, AutoTokenizer.from_pretrained(str(path)), document, dev)


def merged_loaded(
    model: MultiHeadModel, tokenizer: Any, document: dict[str, Any], device: torch.device
) -> Loaded:
    """The `Loaded` of a multi-head classifier merge: `model` (moved to `device`) answering the tasks of
    `document` (merged.json). `open_model` builds it from a merged dir; merging builds it around a backbone held in
    memory (`--tune-weights`), so both evaluate through the same code."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tasks = {}
    for entry in document["tasks"]:
        spec = _merged_spec(entry)
        tasks[entry["name"]] = TaskHead(
            entry["name"],
            spec,
            entry["instruct"],
            entry["template"],
            entry["padding_side"],
            entry.get("seed") or 0,
            known_data=bool(entry.get("task")),
            entry=entry,
        )
    objective = get_objective(document.get("objective", "classification"))
    return Loaded("merged", model.to(device).eval(), tokenizer, tasks, document, device, objective)


def _open_merged_causal(path: Path, document: dict, objective, dev, dtype) -> Loaded:
    """A merge of SFT adapters: one causal LM; each adapter's task (when it came from a run) can be evaluated."""
    model, tokenizer, found = open_causal_dir(str(path), dtype)
    model.to(dev).eval()
    entries = document["tasks"]
    tasks = {
        e["name"]: TaskHead(
            e["name"],
            dataclasses.replace(build_task(e["task"]), name=e["name"]),
            e["instruct"],
            e["template"],
            e["padding_side"],
            e.get("seed") or 0,
            entry=e,
        )
        for e in entries
        if e.get("task")
    }
    instruct = entries[0]["instruct"] if entries and entries[0].get("task") else found
    return Loaded("merged", model, tokenizer, tasks, {**document, "instruct": instruct}, dev, objective)


def _merged_spec(entry: dict[str, Any]) -> TaskSpec:
    if entry.get("task"):
        return dataclasses.replace(build_task(entry["task"]), name=entry["name"])
    names = tuple(entry["label_names"])
    return TaskSpec(
        entry["name"], len(names), ("text",), "label", names, names, "Classify the following text."
    )
