"""The last steps of a training run: run.json (how to rebuild the model), the adapter or model and the tokenizer,
each written whole, and the results.json document (written last: its presence means the run finished)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import torch
import transformers
from torch import nn

import sparta
from sparta.fileio import atomic_dir, write_json, write_jsonl
from sparta.methods import count_parameters, dir_bytes
from sparta.runs.layout import ADAPTER_DIR, MODEL_DIR, RUN_FILE, RUN_FORMAT, TOKENIZER_DIR, examples_file
from sparta.train.config import TrainConfig
from sparta.train.distributed import Runtime
from sparta.train.logs import peak_memory_mb
from sparta.train.setup import Setup


# -- outputs -------------------------------------------------------------------------------------------------------
def run_info(cfg: TrainConfig, s: Setup) -> dict[str, Any]:
    """run.json: what `sparta.runs.open_model` needs to rebuild the model and its input format."""
    return {
        "format": RUN_FORMAT,
        "method": cfg.method,
        "objective": s.objective.name,
        "model": cfg.model,
        "model_path": _abs_if_local(getattr(s.resolved, "path", "")),
        "instruct": s.instruct,
        "task": s.targs,
        "template": cfg.template,
        "num_labels": s.task.num_labels,
        "label_names": list(s.task.label_names),
        "padding_side": cfg.padding_side,
        "max_length": s.max_length,
        "seed": cfg.seed,
        "dtype": str(s.dtype).removeprefix("torch."),
        "precision": s.precision.name,
        "adapter": MODEL_DIR if s.method.saves_model else ADAPTER_DIR,
        "init_from": str(Path(cfg.init_from).resolve()) if cfg.init_from else None,
        **s.objective.run_settings(cfg, s.heads),  # e.g. language modelling: loss_on, lm_head, lm_head_untied
    }


def write_examples(output: Path, name: str, records: list[dict[str, Any]]) -> None:
    """examples/NAME.jsonl: one line of scores per evaluated example (`sparta.objectives.examples`)."""
    path = examples_file(output, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, records)


def write_outputs(output: Path, net: nn.Module, cfg: TrainConfig, s: Setup, rt: Runtime, info: dict) -> Path:
    """Adapter (or model), tokenizer and run.json, each written whole by rank 0; the adapter's path."""
    adapter_path = output / info["adapter"]
    with rt.full_parameters(net):  # sharded parameters: gathered on every rank, saved by rank 0
        if rt.is_main:
            with atomic_dir(adapter_path) as tmp:
                s.method.save(net, tmp, cfg)
    if rt.is_main:
        with atomic_dir(output / TOKENIZER_DIR) as tmp:
            s.tokenizer.save_pretrained(str(tmp))
        write_json(output / RUN_FILE, info)
    return adapter_path


def results_document(
    cfg, s: Setup, net, opt: Any, metrics, zero_shot, restored, stopped_early, ckpt, adapter_path, rt
) -> dict[str, Any]:
    """results.json: the config, metrics, sizes, timings and the history of one run (`opt`: the loop's
    `Optimisation`: its progress counters and early-stopping record)."""
    trainable, total = count_parameters(net)
    prog, train_data = opt.progress, s.enc["train"]
    return {
        "config": cfg.to_dict(),
        "task": s.task.name,
        "method": cfg.method,
        "objective": s.objective.name,
        "model": {
            "name": cfg.model,
            "path": _abs_if_local(getattr(s.resolved, "path", "")),
            "instruct": s.instruct,
        },
        "metrics": metrics,
        "zero_shot": zero_shot,
        "head_init": s.head_info,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / total,
        "peak_memory_mb": peak_memory_mb(s.device),
        "train_seconds": prog.train_seconds,
        "train_examples_per_s": prog.seen / prog.train_seconds if prog.train_seconds else None,
        # the objective's work units per second: examples, pairs, or the input tokens of language modelling
        "train_work_per_s": prog.work / prog.train_seconds if prog.train_seconds else None,
        "work_unit": s.objective.work_unit,
        "adapter_bytes": dir_bytes(adapter_path) if rt.is_main else None,
        "adapter_path": str(adapter_path),
        "steps": prog.step,
        "epochs": prog.seen / len(train_data),
        "best_step": opt.stopper.best_step,
        "restored_best": restored,
        "stopped_early": stopped_early,
        "resumed_from_step": ckpt.step if ckpt is not None else None,
        "processes": rt.world,
        "data": {
            "train": len(train_data),
            "train_dropped_too_long": train_data.dropped,
            "max_length": s.max_length,
            "dev": len(s.enc["dev"]),
            "test": len(s.enc["test"]),
            **s.objective.data_report(s.enc, s.task, cfg),
        },
        "device": str(s.device),
        "dtype": str(s.dtype).removeprefix("torch."),
        "precision": {"name": s.precision.name, "reason": s.precision.reason},
        "history": prog.history,
        "versions": {
            "sparta": sparta.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }


def _abs_if_local(path: str) -> str:
    return str(Path(path).resolve()) if path and Path(path).is_dir() else str(path)
