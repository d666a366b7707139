"""Exporting one training run as a standalone transformers classifier: the adapter merged into its base model.

Every method exports: SpaRTA's deltas are scattered into the weights (`SpartaModel.merge_and_unload`), LoRA and
DoRA are merged by PEFT's own `merge_and_unload`, a head-only run is the base model with its trained head, and a
full fine-tuning run is its own model re-saved with the task's labels. The output is a plain
``AutoModelForSequenceClassification`` directory (nothing sparta-specific in its config) with the tokenizer, so
it loads without sparta and costs exactly what the base model costs. A ``run.json`` sidecar (ignored by
transformers) lets `sparta eval` and `sparta predict` rebuild the run's input format. A bare SpaRTA adapter
directory (``adapter_config.json``, no run.json) exports the same way, onto the base model it records.

An SFT run (objective "language-modelling") exports as a plain ``AutoModelForCausalLM`` directory instead, with
the tokenizer and a generation config that stops at the chat format's end-of-turn token; a run that trained the
LM head writes it untied (``tie_word_embeddings`` false).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer

from sparta.adapter.io import CONFIG_NAME, read_adapter_config
from sparta.adapter.model import SpartaModel
from sparta.errors import SpartaError
from sparta.fileio import read_json, write_json
from sparta.methods import get_method
from sparta.models import load_model, load_tokenizer, quiet_transformers, resolve_model
from sparta.objectives.generation import stop_token_ids
from sparta.runs.causal import base_model_of, is_causal_lm, open_causal_run
from sparta.runs.layout import (
    ADAPTER_DIR,
    MODEL_CONFIG,
    MODEL_DIR,
    RUN_FILE,
    TOKENIZER_DIR,
    kind_of,
    prepare_dir,
)


def export_run(
    source: str | Path, output: str | Path, *, model: str | None = None, overwrite: bool = False
) -> Path:
    """Write `source` (a training run of any method, or a bare SpaRTA adapter dir) into `output` as a plain
    transformers classifier; `model` overrides the base model the run records. Returns `output`."""
    source = Path(source)
    if kind_of(source) == "run":
        info = read_json(source / RUN_FILE)
        if is_causal_lm(info.get("objective")):
            return _export_causal(source, info, output, model, overwrite)
        net, tokenizer = _merged_run(source, info, model)
    elif (source / CONFIG_NAME).is_file():
        info = {}
        net, tokenizer = _merged_bare_adapter(source, model)
    else:
        raise SpartaError(
            f"{source} is neither a training run (run.json + adapter/ or model/) nor a SpaRTA adapter dir "
            f"({CONFIG_NAME}); give a `sparta train` output dir"
        )
    output = prepare_dir(output, overwrite, MODEL_CONFIG)
    num_labels = net.config.num_labels
    labels = info.get("label_names") or [str(i) for i in range(num_labels)]
    net.config.id2label = dict(enumerate(labels))
    net.config.label2id = {name: i for i, name in enumerate(labels)}
    net.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    if info:
        _write_sidecar(output, info, source)
    return output


def _write_sidecar(output: Path, info: dict[str, Any], source: Path) -> None:
    sidecar = {
        **info,
        "method": "export",
        "exported_method": info.get("method"),
        "exported_from": str(source.resolve()),
    }
    write_json(output / RUN_FILE, sidecar)


def _export_causal(
    source: Path, info: dict[str, Any], output: str | Path, model: str | None, overwrite: bool
) -> Path:
    """An SFT run merged into its base causal LM (SpaRTA's deltas scattered in, PEFT's folded in)."""
    if model:
        info = {**info, "model": model, "model_path": str(base_model_of(info, model).path)}
    net, tokenizer = open_causal_run(source, info, torch.float32)
    net = net.merge_and_unload() if hasattr(net, "merge_and_unload") else net
    output = prepare_dir(output, overwrite, MODEL_CONFIG)
    write_generation_config(net, tokenizer)
    net.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    _write_sidecar(output, info, source)
    return output


def write_generation_config(net: nn.Module, tokenizer: Any) -> None:
    """Make the model's generation config stop where ours does (EOS and end-of-turn) and pad with the pad token,
    so plain `model.generate` without sparta behaves as `sparta generate`."""
    net.generation_config.eos_token_id = stop_token_ids(tokenizer, net)
    net.generation_config.pad_token_id = tokenizer.pad_token_id


def _merged_run(run_dir: Path, info: dict[str, Any], model: str | None) -> tuple[nn.Module, Any]:
    method = get_method(info.get("method", ""))
    num_labels = len(info["label_names"]) if info.get("label_names") else info["num_labels"]
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / TOKENIZER_DIR))
    resolved = resolve_model(str(run_dir / MODEL_DIR)) if method.saves_model else base_model_of(info, model)
    with quiet_transformers():
        net = load_model(resolved, task="classification", num_labels=num_labels, dtype="float32")
    net.config.pad_token_id = tokenizer.pad_token_id
    if not method.saves_model:
        net = method.load(net, run_dir / ADAPTER_DIR)
    # SpaRTA (deltas scattered into W) and PEFT (LoRA/DoRA folded into W, the trained head kept) both unwrap
    return (net.merge_and_unload() if hasattr(net, "merge_and_unload") else net), tokenizer


def _merged_bare_adapter(path: Path, model: str | None) -> tuple[nn.Module, Any]:
    document = read_adapter_config(path)
    if not document["heads"]:
        raise SpartaError(f"{path} has no trained head; only a classifier adapter exports as a classifier")
    name = model or document["base_model"].get("name_or_path")
    if not name:
        raise SpartaError(f"{path} does not record its base model; pass --model")
    resolved = resolve_model(name)
    num_labels = int(next(iter(document["heads"].values()))[0])
    with quiet_transformers():
        net = load_model(resolved, task="classification", num_labels=num_labels, dtype="float32")
    tokenizer = load_tokenizer(resolved)
    net.config.pad_token_id = tokenizer.pad_token_id
    return SpartaModel.from_pretrained(net, path).merge_and_unload(), tokenizer
