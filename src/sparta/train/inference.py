"""Rebuilding a trained classifier from a directory alone, and using it: `evaluate` and `predict`.

A directory is either a training output (run.json + adapter/ or model/ + tokenizer/) or a plain Hugging Face
sequence-classification model directory (e.g. a merged export; then the task must be named).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparta.errors import SpartaError
from sparta.train import data as D
from sparta.train import loop as L
from sparta.train import methods as M
from sparta.train.results import RUN_FILE, TOKENIZER_DIR, read_json


@dataclass
class LoadedRun:
    model: nn.Module
    tokenizer: Any
    task: Any
    info: dict[str, Any]
    device: torch.device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def padding_side(self) -> str:
        return self.info.get("padding_side", "right")


def _task_from(info: dict[str, Any], task: str | None):
    if task is None:
        if "task" not in info:
            raise SpartaError("this model directory has no run.json naming its task; pass --task")
        return L.build_task(info["task"])
    targs = dict(info.get("task") or {})
    if targs.get("name") != task:
        targs = {"name": task}
    return L.build_task(targs)


def load_run(
    path: str | Path, task: str | None = None, device: str | None = None, dtype: str | None = None
) -> LoadedRun:
    """Load a training output dir or a plain HF classification model dir, ready for inference."""
    from transformers import AutoTokenizer

    from sparta.models import load_model, load_tokenizer, resolve_model

    run_dir = Path(path)
    if not run_dir.is_dir():
        raise SpartaError(f"{run_dir} is not a directory; give a training output dir or a model dir")
    info = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).is_file() else {}
    method = info.get("method")
    dev, torch_dtype = L.pick_device(device, dtype)
    spec = _task_from(info, task)
    if method in ("sparta", "lora", "dora", "head"):
        try:
            resolved = resolve_model(info["model"])
        except SpartaError:  # e.g. a relative model dir given from another working directory
            resolved = resolve_model(info.get("model_path") or info["model"])
        with L.quiet_transformers():
            model = load_model(resolved, task="classification", num_labels=spec.num_labels, dtype=torch_dtype)
        if not (run_dir / TOKENIZER_DIR).is_dir():
            raise SpartaError(f"{run_dir} has no {TOKENIZER_DIR}/ folder; is it a finished training run?")
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir / TOKENIZER_DIR))
        model.config.pad_token_id = tokenizer.pad_token_id
        model = M.load_adapter(model, method, run_dir)
        instruct = info["instruct"]
    else:
        model_dir = run_dir / M.MODEL_DIR if method == "full" else run_dir
        if not (model_dir / "config.json").is_file():
            raise SpartaError(f"{run_dir} holds neither a run.json with an adapter nor a model (config.json)")
        resolved = resolve_model(str(model_dir))
        with L.quiet_transformers():
            model = load_model(resolved, task="classification", num_labels=spec.num_labels, dtype=torch_dtype)
        tok_dir = run_dir / TOKENIZER_DIR
        tokenizer = (
            AutoTokenizer.from_pretrained(str(tok_dir)) if tok_dir.is_dir() else load_tokenizer(resolved)
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        instruct = info.get("instruct", bool(getattr(resolved, "instruct", False)))
    if tokenizer.pad_token_id is None:
        raise SpartaError(f"the tokenizer in {run_dir} has no pad token")
    tokenizer.padding_side = info.get("padding_side", "right")
    info = {**info, "instruct": instruct}
    model.to(dev).eval()
    return LoadedRun(model, tokenizer, spec, info, dev)


def evaluate_run(
    run: LoadedRun,
    split: str = "test",
    data_dir: str | None = None,
    max_eval_samples: int | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Metrics (loss, accuracy, ...) of a loaded run on one split of its task."""
    from sparta.tasks import load_splits

    if split not in L.SPLITS:
        raise SpartaError(f"unknown split {split!r}; choose one of {', '.join(L.SPLITS)}")
    splits = load_splits(run.task, data_dir, seed=run.info.get("seed", 0), max_eval_samples=max_eval_samples)
    if not splits[split]:
        raise SpartaError(f"task {run.task.name} has no {split} examples")
    context = getattr(run.model.config, "max_position_embeddings", None)
    data = D.encode_split(
        splits[split],
        run.task,
        run.tokenizer,
        run.info["instruct"],
        run.info.get("template"),
        context,
        truncate=True,
    )
    return L.evaluate(run.model, data, run.task, batch_size, run.pad_id, run.padding_side, run.device)


def examples_from_texts(task, texts: list[str]) -> list[dict]:
    """CLI inputs to examples: a JSON object is one example; else plain strings fill the task's text fields in order."""
    if texts and all(t.lstrip().startswith("{") for t in texts):
        try:
            return [json.loads(t) | {"label": 0} for t in texts]
        except json.JSONDecodeError as err:
            raise SpartaError(f"input is not a valid JSON example: {err}") from None
    k = len(task.text_fields)
    if not texts or len(texts) % k:
        raise SpartaError(
            f"task {task.name} takes {k} text(s) per example ({', '.join(task.text_fields)}); got {len(texts)}"
        )
    return [
        dict(zip(task.text_fields, texts[i : i + k], strict=True)) | {"label": 0}
        for i in range(0, len(texts), k)
    ]


def predict(run: LoadedRun, examples: list[dict], batch_size: int = 32) -> list[dict[str, Any]]:
    """For each example: the predicted label name and the probability of every label."""
    data = D.encode_split(examples, run.task, run.tokenizer, run.info["instruct"], run.info.get("template"))
    logits = L.predict_logits(run.model, data, batch_size, run.pad_id, run.padding_side, run.device)
    probs = logits.softmax(-1)
    names = list(run.task.label_names)
    return [
        {
            "label": names[int(p.argmax())],
            "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)},
        }
        for p in probs
    ]
