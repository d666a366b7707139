"""The training recipe: one readable `train(cfg)` made of plain parts (torchtune-recipe style).

setup (seeds, device, task, tokenizer, data) -> model and head init -> zero-shot eval -> method -> AdamW + schedule
-> steps with gradient accumulation, clipping, periodic dev evaluation and early stopping -> restore the best
trainable state -> final dev/test metrics -> adapter, tokenizer, run.json and results.json in the output dir.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparta.errors import SpartaError
from sparta.train import data as D
from sparta.train import methods as M
from sparta.train.config import TrainConfig
from sparta.train.heads import init_base_head, init_instruct_head
from sparta.train.results import (
    RESULTS_FILE,
    RUN_FILE,
    RUN_FORMAT,
    TOKENIZER_DIR,
    RunLogger,
    peak_memory_mb,
    prepare_output,
    write_json,
)

SPLITS = ("train", "dev", "test")


# -- setup -------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """cuda when available (bfloat16), else cpu (float32), unless given."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpartaError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    name = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    return dev, getattr(torch, name)


def task_args(cfg: TrainConfig) -> dict[str, Any]:
    """Keyword arguments for `sparta.tasks.get_task`, with file paths made absolute (stored in run.json)."""
    files = {k: str(Path(v).resolve()) for k in SPLITS if (v := getattr(cfg, f"{k}_file"))}
    if files and cfg.task != "custom":
        raise SpartaError("--train-file/--dev-file/--test-file need --task custom")
    overrides = {
        "text_fields": tuple(cfg.text_fields) if cfg.text_fields else None,
        "label_field": cfg.label_field,
        "label_words": tuple(cfg.label_words) if cfg.label_words else None,
        "instruction": cfg.instruction,
    }
    args: dict[str, Any] = {"name": cfg.task, **{k: v for k, v in overrides.items() if v is not None}}
    if files:
        args["data_files"] = files
    return args


def build_task(args: dict[str, Any]):
    from sparta.tasks import get_task

    args = dict(args)
    return get_task(args.pop("name"), **args)


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' load report (the new head is always "MISSING" from a causal-LM checkpoint)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_model_and_tokenizer(model: str, num_labels: int, dtype: torch.dtype, padding_side: str):
    """(resolved, model, tokenizer) via sparta.models; the tokenizer has a pad token and the given padding side."""
    from sparta.models import load_model, load_tokenizer, resolve_model

    resolved = resolve_model(model)
    tokenizer = load_tokenizer(resolved)
    tokenizer.padding_side = padding_side
    with quiet_transformers():
        net = load_model(resolved, task="classification", num_labels=num_labels, dtype=dtype)
    net.config.pad_token_id = tokenizer.pad_token_id  # the head pools the last token that is not this id
    return resolved, net, tokenizer


def init_head(
    cfg: TrainConfig, model: nn.Module, tokenizer, task, instruct: bool, prompt: str | None, path
) -> dict:
    """Base models: random N(0, (0.06/sqrt d)^2). Instruct models: label-word rows of the LM output embeddings."""
    if instruct:
        return {"kind": "label_words", **init_instruct_head(model, tokenizer, task.label_words, prompt, path)}
    return {"kind": "random", "std": init_base_head(model, seed=cfg.seed)}


# -- evaluation --------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(
    model: nn.Module, data: D.Encoded, batch_size: int, pad_id: int, padding_side: str, device
) -> torch.Tensor:
    """(N, C) float32 logits in example order; batches are length-sorted to limit padding."""
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    for idx, batch in D.iter_batches(data, D.sorted_batches(data.lengths, batch_size), pad_id, padding_side):
        batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        if out is None:
            out = torch.empty(len(data), logits.shape[-1])
        out[idx] = logits
    model.train(was_training)
    return out if out is not None else torch.empty(0, 0)


def evaluate(
    model: nn.Module, data: D.Encoded, task, batch_size: int, pad_id: int, padding_side: str, device
) -> dict:
    """The task's metrics plus the mean cross-entropy loss on one split."""
    from sparta.tasks import compute_metrics

    logits = predict_logits(model, data, batch_size, pad_id, padding_side, device)
    labels = torch.tensor(data.labels, dtype=torch.long)
    loss = F.cross_entropy(logits, labels).item()
    return {"loss": loss, **compute_metrics(task, logits, labels, loss=loss)}


# -- the training stream ------------------------------------------------------------------------------------------
def micro_batches(data: D.Encoded, batch_size: int, seed: int):
    """Endless stream of batch indices: a fresh length-grouped shuffle each epoch."""
    epoch = 0
    while True:
        rng = random.Random(seed * 1000 + epoch)
        yield from D.length_grouped_batches(data.lengths, batch_size, rng)
        epoch += 1


@dataclass
class EarlyStopping:
    """Tracks the lowest dev loss and keeps a copy of the trainable tensors at that point."""

    patience: int | None
    best_loss: float = math.inf
    best_step: int | None = None
    best_metrics: dict = field(default_factory=dict)
    best_state: dict | None = None
    bad_evals: int = 0

    def update(self, model: nn.Module, step: int, metrics: dict, keep_state: bool) -> bool:
        """Record an evaluation; True when training should stop."""
        if metrics["loss"] < self.best_loss:
            self.best_loss, self.best_step, self.best_metrics = metrics["loss"], step, metrics
            self.best_state = M.trainable_state(model) if keep_state else None
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return self.patience is not None and self.bad_evals >= self.patience


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


# -- the recipe --------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, log=print) -> dict[str, Any]:
    """Run one training job as `cfg` says; writes the output dir and returns the results dict."""
    from sparta.tasks import format_input, load_splits

    output = prepare_output(cfg.output or f"runs/{cfg.task}-{cfg.method}-seed{cfg.seed}", cfg.overwrite)
    seed_everything(cfg.seed)
    device, dtype = pick_device(cfg.device, cfg.dtype)
    targs = task_args(cfg)
    task = build_task(targs)

    # model, tokenizer, data
    resolved, model, tokenizer = load_model_and_tokenizer(cfg.model, task.num_labels, dtype, cfg.padding_side)
    instruct = bool(getattr(resolved, "instruct", False))
    pad_id = tokenizer.pad_token_id
    splits = load_splits(
        task,
        cfg.data_dir,
        seed=cfg.seed,
        max_train_samples=cfg.max_train_samples,
        max_eval_samples=cfg.max_eval_samples,
    )
    if not splits["train"]:
        raise SpartaError(f"task {task.name} has no training examples")
    max_length = cfg.max_length or task.max_length
    context = getattr(model.config, "max_position_embeddings", None)
    enc = {
        "train": D.encode_split(splits["train"], task, tokenizer, instruct, cfg.template, max_length),
        **{
            s: D.encode_split(splits[s], task, tokenizer, instruct, cfg.template, context, truncate=True)
            for s in ("dev", "test")
        },
    }
    train_data = enc["train"]
    if not len(train_data):
        raise SpartaError(
            f"all {train_data.dropped} training examples are longer than {max_length} tokens; raise --max-length"
        )
    log(
        f"data: train {len(train_data)} (dropped {train_data.dropped} > {max_length} tokens), "
        f"dev {len(enc['dev'])}, test {len(enc['test'])}; {'instruct' if instruct else 'base'} model {cfg.model}"
    )

    # head initialisation, dropout, zero-shot evaluation, method
    prompt = (
        format_input(task, splits["train"][0], tokenizer, instruct=True, template=cfg.template)
        if instruct
        else None
    )
    head_info = init_head(cfg, model, tokenizer, task, instruct, prompt, getattr(resolved, "path", None))
    if cfg.dropout is not None:
        M.set_dropout(model, cfg.dropout)
    model.to(device)
    eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
    run_eval = lambda split: evaluate(model, enc[split], task, eval_bs, pad_id, cfg.padding_side, device)  # noqa: E731
    zero_shot = None
    if cfg.zero_shot:
        zero_shot = {s: run_eval(s) for s in ("dev", "test") if len(enc[s])}
        for s, m in zero_shot.items():
            log(f"zero-shot {s}: {_fmt(m)}")
    model = M.apply_method(model, cfg)
    model.to(device)
    model.train()
    trainable, total = M.count_parameters(model)
    log(
        f"method {cfg.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.4f}%)"
    )

    # optimizer and schedule
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(M.decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = max(1, math.ceil(math.ceil(len(train_data) / cfg.batch_size) / cfg.grad_accum))
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total_steps)
    schedule = "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    eval_every = cfg.eval_every or steps_per_epoch
    has_dev = len(enc["dev"]) > 0
    params = [p for p in model.parameters() if p.requires_grad]

    # the loop
    from tqdm.auto import tqdm

    logger = RunLogger(
        output,
        [
            "step",
            "epoch",
            "lr",
            "train_loss",
            "examples_per_s",
            "dev_loss",
            *(f"dev_{m}" for m in task.metrics),
        ],
    )
    stopper = EarlyStopping(cfg.early_stopping_patience)
    history: list[dict] = []
    stream = micro_batches(train_data, cfg.batch_size, cfg.seed)
    window_loss, window_n, seen, train_seconds, step = 0.0, 0, 0, 0.0, 0
    stopped_early, last_dev = False, {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=total_steps, desc=f"{cfg.method} {task.name}", unit="step", disable=not cfg.progress)
    for step in range(1, total_steps + 1):
        t0 = time.perf_counter()
        chunk = [next(stream) for _ in range(cfg.grad_accum)]
        n_step = sum(len(idx) for idx in chunk)
        step_loss = 0.0
        for idx in chunk:
            batch = D.collate(
                [train_data.input_ids[i] for i in idx],
                pad_id,
                cfg.padding_side,
                [train_data.labels[i] for i in idx],
            )
            labels = batch.pop("labels").to(device)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            loss = F.cross_entropy(logits, labels, reduction="sum") / n_step
            loss.backward()
            step_loss += loss.item()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - t0
        seen += n_step
        window_loss, window_n = window_loss + step_loss, window_n + 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", ex_s=f"{seen / train_seconds:.1f}")

        do_eval = has_dev and (step % eval_every == 0 or step == total_steps)
        if step % cfg.log_every == 0 or do_eval or step == total_steps:
            entry = {"step": step, "train_loss": window_loss / window_n}
            row = {
                **entry,
                "epoch": round(seen / len(train_data), 4),
                "lr": scheduler.get_last_lr()[0],
                "examples_per_s": seen / train_seconds,
            }
            window_loss, window_n = 0.0, 0
            if do_eval:
                last_dev = run_eval("dev")
                entry["dev_loss"] = last_dev["loss"]
                row.update({f"dev_{k}": v for k, v in last_dev.items()})
                stopped_early = stopper.update(model, step, last_dev, keep_state=cfg.restore_best)
                bar.write(f"step {step}: train_loss={entry['train_loss']:.4f} dev: {_fmt(last_dev)}")
            history.append(entry)
            logger.log(row)
            if stopped_early:
                log(f"early stopping at step {step}: no lower dev loss for {stopper.bad_evals} evaluations")
                break
    bar.close()
    logger.close()

    # restore the best state, final metrics
    restored = cfg.restore_best and stopper.best_state is not None and stopper.best_step != step
    if restored:
        M.load_trainable_state(model, stopper.best_state)
        log(f"restored the trainable state of step {stopper.best_step} (dev loss {stopper.best_loss:.4f})")
    stopper.best_state = None
    metrics = {}
    if has_dev:
        metrics["dev"] = stopper.best_metrics if restored else last_dev
    if len(enc["test"]):
        metrics["test"] = run_eval("test")
    for s, m in metrics.items():
        log(f"{s}: {_fmt(m)}")

    # save: adapter, tokenizer, run.json, results.json
    adapter_path = M.save_adapter(model, cfg.method, output, cfg)
    tokenizer.save_pretrained(str(output / TOKENIZER_DIR))
    run_info = {
        "format": RUN_FORMAT,
        "method": cfg.method,
        "model": cfg.model,
        "model_path": _abs_if_local(getattr(resolved, "path", "")),
        "instruct": instruct,
        "task": targs,
        "template": cfg.template,
        "num_labels": task.num_labels,
        "label_names": list(task.label_names),
        "padding_side": cfg.padding_side,
        "max_length": max_length,
        "seed": cfg.seed,
        "dtype": str(dtype).removeprefix("torch."),
        "adapter": adapter_path.name,
    }
    write_json(output / RUN_FILE, run_info)
    results = {
        "config": cfg.to_dict(),
        "task": task.name,
        "method": cfg.method,
        "model": {"name": cfg.model, "path": run_info["model_path"], "instruct": instruct},
        "metrics": metrics,
        "zero_shot": zero_shot,
        "head_init": head_info,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / total,
        "peak_memory_mb": peak_memory_mb(device),
        "train_seconds": train_seconds,
        "train_examples_per_s": seen / train_seconds if train_seconds else None,
        "adapter_bytes": M.dir_bytes(adapter_path),
        "adapter_path": str(adapter_path),
        "steps": step,
        "epochs": seen / len(train_data),
        "best_step": stopper.best_step,
        "restored_best": restored,
        "stopped_early": stopped_early,
        "data": {
            "train": len(train_data),
            "train_dropped_too_long": train_data.dropped,
            "max_length": max_length,
            "dev": len(enc["dev"]),
            "test": len(enc["test"]),
        },
        "device": str(device),
        "dtype": run_info["dtype"],
        "history": history,
        "versions": _versions(),
    }
    write_json(output / RESULTS_FILE, results)
    log(f"wrote {output / RESULTS_FILE}")
    return results


def _abs_if_local(path: str) -> str:
    return str(Path(path).resolve()) if path and Path(path).is_dir() else str(path)


def _versions() -> dict[str, str]:
    import peft
    import transformers

    import sparta

    return {
        "sparta": sparta.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
