"""Opening causal-LM directories: what generation and language-modelling evaluation run on.

An SFT run (run.json with objective "language-modelling") is its base model loaded as an
``AutoModelForCausalLM`` with the method's adapter on top (SpaRTA's `SpartaModel.from_pretrained`, PEFT's
`PeftModel.from_pretrained`; full fine-tuning: the run's own model/), an exported or merged causal LM is a plain
transformers directory, and a base model is a registry alias, hub id or directory. A run that trained the LM
head (run.json ``lm_head`` "train" or "sparse", ``lm_head_untied``) on a model whose head shares the input
embedding trained an untied copy of it, so its base is untied before the adapter is attached (`untie_lm_head`);
its export is untied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from sparta.errors import SpartaError
from sparta.fileio import read_json
from sparta.methods import get_method
from sparta.models import ResolvedModel, load_model, load_tokenizer, quiet_transformers, resolve_model
from sparta.objectives import get_objective
from sparta.objectives.lm_head import untie_lm_head
from sparta.runs.layout import ADAPTER_DIR, MODEL_DIR, RUN_FILE, TOKENIZER_DIR

LANGUAGE_MODELLING = "language-modelling"  # the objective of SFT runs (sparta.objectives.language_modelling)
FROZEN_HEAD = "frozen"  # run.json "lm_head" of a run that left the LM head as it was


def is_causal_lm(objective: str | None) -> bool:
    """Whether a run of `objective` (run.json's "objective"; runs from before SFT: classification) is a causal LM
    (SFT, DPO, GRPO): asked of the objective plug-in, never of its name."""
    return get_objective(objective or "classification").model_kind == "causal-lm"


def has_trained_head(path: str) -> bool:
    """Whether the checkpoint at `path` is a sequence or token classifier (a trained classification head)."""
    try:
        architectures = AutoConfig.from_pretrained(path).architectures or []
    except (OSError, ValueError):
        return False
    return any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures)


def base_model_of(info: dict[str, Any], model: str | None = None) -> ResolvedModel:
    """The base model a run was trained on (`model` overrides it): its name, else its recorded absolute path
    (a relative model dir given from another working directory)."""
    if model:
        return resolve_model(model)
    try:
        return resolve_model(info["model"])
    except SpartaError:
        return resolve_model(info.get("model_path") or info["model"])


def with_pad_token(tokenizer: Any) -> Any:
    """The tokenizer with a pad token (its EOS when it has none): batched generation pads with it."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise SpartaError(
                "the tokenizer has neither a pad nor an EOS token; batched generation needs one"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def open_causal_run(run_dir: Path, info: dict[str, Any], dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """(model, tokenizer) of an SFT run: the method's files on a freshly loaded causal LM."""
    if not (run_dir / TOKENIZER_DIR).is_dir():
        raise SpartaError(f"{run_dir} has no {TOKENIZER_DIR}/ folder; is it a finished training run?")
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(str(run_dir / TOKENIZER_DIR)))
    method = get_method(info.get("method", ""))
    if info.get("init_from") and not method.saves_model:  # trained on top of another run's merged model
        model = merged_run_model(Path(info["init_from"]), dtype)
    else:
        resolved = resolve_model(str(run_dir / MODEL_DIR)) if method.saves_model else base_model_of(info)
        with quiet_transformers():
            model = load_model(resolved, task="causal-lm", dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    if method.saves_model:
        return model, tokenizer
    # run.json "lm_head_untied" says whether training untied the head; runs that only name the mode untie when
    # the head trained (untying an untied head does nothing)
    if info.get("lm_head_untied", info.get("lm_head", FROZEN_HEAD) != FROZEN_HEAD):
        untie_lm_head(model)
    return method.load(model, run_dir / ADAPTER_DIR), tokenizer


def run_reference(model: nn.Module, info: dict[str, Any], dtype: torch.dtype, device: torch.device):  # noqa: ANN201
    """The method of a causal-LM run, ready to give `model` (the run, opened) its preference reference: the
    disabled adapter, or for full fine-tuning the model it started from, loaded here (the base model, or the
    `--init-from` run's merged model)."""
    method = get_method(info.get("method", ""))
    if method.saves_model:
        if info.get("init_from"):
            start = merged_run_model(Path(info["init_from"]), dtype)
        else:
            with quiet_transformers():
                start = load_model(base_model_of(info), task="causal-lm", dtype=dtype)
        method.keep_reference(model, reference=start.to(device))
    return method


def open_causal_dir(name: str, dtype: torch.dtype) -> tuple[nn.Module, Any, bool]:
    """(model, tokenizer, instruct) of an exported or merged causal LM, a model directory or a model name."""
    resolved = resolve_model(name)
    if resolved.is_local and has_trained_head(resolved.path):
        raise SpartaError(
            f"{name} holds a classifier (a trained classification head), not a causal LM; generation needs an "
            "SFT run, an exported or merged causal LM, or a base model"
        )
    with quiet_transformers():
        model = load_model(resolved, task="causal-lm", dtype=dtype)
    tokenizer = with_pad_token(load_tokenizer(resolved))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, bool(resolved.instruct)


def merged_run_model(run_dir: Path, dtype: torch.dtype) -> nn.Module:
    """The model of a causal-LM run (SFT) as a plain transformers model: its adapter merged into the base weights
    (`merge_and_unload`: SpaRTA writes W0[phi] + delta, exactly what its forward runs), full FT's model/ as it is.
    What `--init-from RUN` starts from: its weights are the next run's W0."""
    if not (run_dir / RUN_FILE).is_file():
        raise SpartaError(
            f"--init-from {run_dir}: no {RUN_FILE} there; give the directory of a finished SFT run"
        )
    info = read_json(run_dir / RUN_FILE)
    if not is_causal_lm(info.get("objective")):
        raise SpartaError(
            f"--init-from {run_dir}: it is a {info.get('objective', 'classification')} run; give an "
            "SFT (language-modelling) run"
        )
    model, _ = open_causal_run(run_dir, info, dtype)
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    return model.requires_grad_(True)
