"""Where everything lives in the directories sparta writes, in one place.

A **training run** (`sparta train --output DIR`) holds ``run.json`` (how to rebuild the model: method, base
model, task arguments, prompt settings), ``results.json`` (config, metrics, timings; written last, so its
presence means the run finished), ``log.csv``, ``tb/``, ``tokenizer/``, ``examples/`` (each test example's
scores, for paired comparisons: `sparta compare`) and either ``adapter/`` (sparta, lora,
dora, head) or ``model/`` (full fine-tuning: a whole transformers model), plus ``checkpoint-STEP/`` folders while
it runs. A **merged model** (`sparta merge`) is a transformers checkpoint of the base causal LM with the merged
weights, its tokenizer, ``heads/<task>.safetensors`` and ``merged.json`` (and ``tuning.csv`` when its weights were
tuned on dev). An **export** (`sparta export`) is a
plain transformers model directory with a ``run.json`` sidecar. Anything else with a ``config.json`` is a model
directory; one with adapter files (``adapter_config.json``, ``adapter_model.safetensors``: a run's ``adapter/``,
or what `SpartaModel.save_pretrained` or PEFT write) but neither is a bare adapter; anything else at all is taken
as a model name (registry alias or hub id).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sparta.adapter.io import CONFIG_NAME as ADAPTER_CONFIG
from sparta.adapter.io import WEIGHTS_NAME as ADAPTER_WEIGHTS
from sparta.errors import SpartaError

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
LOG_FILE = "log.csv"
TB_DIR = "tb"
TOKENIZER_DIR = "tokenizer"
ADAPTER_DIR = "adapter"  # sparta, lora, dora, head: what the method saves on top of the base model
MODEL_DIR = "model"  # full fine-tuning: a complete save_pretrained of the model
EXAMPLES_DIR = "examples"  # per-example scores: test.jsonl (final), zero-shot.test.jsonl (before training)
CHECKPOINT_PREFIX = "checkpoint-"
RUN_FORMAT = 1
# Everything a training run writes; --overwrite clears these (and nothing else) first.
RUN_OUTPUTS = (RESULTS_FILE, RUN_FILE, LOG_FILE, TB_DIR, TOKENIZER_DIR, ADAPTER_DIR, MODEL_DIR, EXAMPLES_DIR)

MERGED_FILE = "merged.json"
HEADS_DIR = "heads"
HEAD_METADATA_KEY = "sparta_task"  # a merged head file's metadata: its merged.json task entry, as JSON
TUNING_FILE = "tuning.csv"  # `sparta merge --tune-weights`: every candidate's per-task dev accuracy and drop
MERGED_FORMAT = 1
MODEL_CONFIG = "config.json"  # a transformers model directory


def kind_of(path: str | Path) -> str:
    """ "merged", "run" (a training output), "model" (a transformers model directory), "adapter" (adapter files
    alone) or "name" (anything else)."""
    path = Path(path)
    if (path / MERGED_FILE).is_file():
        return "merged"
    if (path / RUN_FILE).is_file() and ((path / ADAPTER_DIR).is_dir() or (path / MODEL_DIR).is_dir()):
        return "run"
    if (path / MODEL_CONFIG).is_file():
        return "model"
    if (path / ADAPTER_CONFIG).is_file() or (path / ADAPTER_WEIGHTS).is_file():
        return "adapter"
    return "name"


def prepare_output(path: str | Path, overwrite: bool, resume: bool = False, create: bool = True) -> Path:
    """Check (and unless create=False, create) a training run's output dir.

    A dir holding a finished run (results.json) is refused unless overwrite, which clears our files first; one
    holding checkpoints of an unfinished run is refused unless resume (continue it) or overwrite (start over).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SpartaError(f"output {out} exists and is not a directory")
    checkpoints = sorted(out.glob(f"{CHECKPOINT_PREFIX}*")) if out.is_dir() else []
    if resume:
        if (out / RESULTS_FILE).exists():
            raise SpartaError(f"{out} holds a finished run ({RESULTS_FILE}); there is nothing to resume")
        if not checkpoints:
            raise SpartaError(
                f"--resume: {out} holds no {CHECKPOINT_PREFIX}STEP/ folder; train with --save-every N first"
            )
        return out
    if (out / RESULTS_FILE).exists() and not overwrite:
        raise SpartaError(
            f"{out} already holds a finished run ({RESULTS_FILE}); pass --overwrite or pick another --output"
        )
    if checkpoints and not overwrite:
        raise SpartaError(
            f"{out} holds checkpoints of an unfinished run; pass --resume to continue it or --overwrite to start over"
        )
    if create:
        if overwrite:
            for target in [*(out / name for name in RUN_OUTPUTS), *checkpoints]:
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        out.mkdir(parents=True, exist_ok=True)
    return out


def prepare_dir(output: str | Path, overwrite: bool, marker: str) -> Path:
    """An empty output dir for a merge or an export; a non-empty one is replaced only with `overwrite` and only
    when it holds `marker` (so a folder sparta did not write is never deleted)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise SpartaError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise SpartaError(f"output {output} is not empty; pass --overwrite or pick another --output")
        if not (output / marker).is_file():
            raise SpartaError(
                f"output {output} holds files sparta did not write ({marker} missing); not overwriting"
            )
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    return output


def examples_file(run: str | Path, name: str = "test") -> Path:
    """A run's per-example scores: "test" (the final test evaluation) or "zero-shot.test" (before training)."""
    return Path(run) / EXAMPLES_DIR / f"{name}.jsonl"
