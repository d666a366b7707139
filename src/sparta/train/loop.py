"""The training recipe: one readable `train(cfg)` made of plain parts (torchtune-recipe style).

setup (seeds, device, task, tokenizer, data) -> model and head init -> zero-shot eval -> method -> AdamW + schedule
-> steps with gradient accumulation, clipping, periodic dev evaluation and early stopping -> restore the best
trainable state -> final dev/test metrics -> adapter, tokenizer, run.json and results.json in the output dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparta.adapter import native
from sparta.errors import SpartaError
from sparta.tasks.labels import class_counts
from sparta.train import checkpoint as C
from sparta.train import data as D
from sparta.train import methods as M
from sparta.train.config import TrainConfig
from sparta.train.distributed import Runtime, launched_distributed
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
        "label_names": tuple(cfg.labels) if cfg.labels else None,
        "allow_rare_labels": cfg.allow_rare_labels or None,
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
    model: nn.Module,
    data: D.Encoded,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    device,
    rt: Runtime | None = None,
) -> torch.Tensor:
    """(N, C) float32 logits in example order; batches are length-sorted to limit padding.

    With a multi-process `rt`, each rank scores every world-th batch and the logits are gathered on all ranks.
    Where parameters are sharded every forward is a collective: all ranks run as many (stand-ins discarded).
    """
    was_training = model.training
    model.eval()
    every = D.sorted_batches(data.lengths, batch_size)
    batches, calls = every, len(every)
    if rt is not None and rt.distributed:
        batches = every[rt.rank :: rt.world]
        calls = -(-len(every) // rt.world) if rt.sharded else len(batches)
    stand_ins = every[:1] * (calls - len(batches))
    parts = []
    for idx, batch in D.iter_batches(data, batches + stand_ins, pad_id, padding_side):
        batch.pop("labels")
        parts.append((idx, model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()))
    parts = parts[: len(batches)]
    model.train(was_training)
    if rt is not None and rt.distributed:
        parts = [part for rank_parts in rt.gather(parts) for part in rank_parts]
    if not parts:
        return torch.empty(0, 0)
    out = torch.empty(len(data), parts[0][1].shape[-1])
    for idx, logits in parts:
        out[idx] = logits
    return out


def evaluate(
    model: nn.Module,
    data: D.Encoded,
    task,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    device,
    rt: Runtime | None = None,
) -> dict:
    """The task's metrics plus the mean cross-entropy loss on one split."""
    from sparta.tasks import compute_metrics

    logits = predict_logits(model, data, batch_size, pad_id, padding_side, device, rt)
    labels = torch.tensor(data.labels, dtype=torch.long)
    loss = F.cross_entropy(logits, labels).item()
    return {"loss": loss, **compute_metrics(task, logits, labels, loss=loss)}


# -- the training step ----------------------------------------------------------------------------------------------
def batch_loss(model: nn.Module, data: D.Encoded, idx: list[int], pad_id: int, padding_side: str, device):
    """Summed cross-entropy of the examples `idx` (a 0-dim float32 tensor with a graph)."""
    batch = D.collate([data.input_ids[i] for i in idx], pad_id, padding_side, [data.labels[i] for i in idx])
    labels = batch.pop("labels").to(device)
    logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
    return F.cross_entropy(logits, labels, reduction="sum")


def rank_slice(global_idx: list[int], rt: Runtime, batch_size: int) -> tuple[list[int], float]:
    """This rank's contiguous slice of a global batch, and its weight (0: an empty slice, run on a stand-in)."""
    if not rt.distributed:
        return global_idx, 1.0
    idx = global_idx[rt.rank * batch_size : (rt.rank + 1) * batch_size]
    return (idx, 1.0) if idx else (global_idx[:1], 0.0)


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

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("best_loss", "best_step", "best_metrics", "bad_evals")}


@dataclass
class Progress:
    """The loop's counters: everything besides tensors that a checkpoint needs to continue exactly."""

    step: int = 0
    seen: int = 0
    train_seconds: float = 0.0
    window_loss: float = 0.0
    window_n: int = 0
    history: list = field(default_factory=list)
    last_dev: dict = field(default_factory=dict)


# Settings a resumed run may change; every other one must equal the checkpoint's.
RESUMABLE_CHANGES = ("output", "resume", "overwrite", "progress", "save_every", "keep_checkpoints", "device")


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _crash_for_tests(step: int) -> None:
    """Test hook: SPARTA_TEST_CRASH_AT_STEP=N kills the process (as kill -9 would) right after step N."""
    if os.environ.get("SPARTA_TEST_CRASH_AT_STEP") == str(step):
        os._exit(137)


def state_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter (merged SpaRTA weights included): equal on all ranks of a healthy DDP run."""
    import hashlib

    if hasattr(model, "sync_weights"):
        model.sync_weights()
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_output(cfg: TrainConfig) -> str:
    """The run dir: --resume DIR, else --output, else runs/<task>-<method>-seed<seed>."""
    if isinstance(cfg.resume, str):
        if cfg.output and Path(cfg.output).resolve() != Path(cfg.resume).resolve():
            raise SpartaError(f"--resume {cfg.resume} and --output {cfg.output} differ; give one run dir")
        return cfg.resume
    return cfg.output or f"runs/{cfg.task}-{cfg.method}-seed{cfg.seed}"


def check_resumable(cfg: TrainConfig, saved: dict, where: Path) -> None:
    now, defaults = cfg.to_dict(), TrainConfig().to_dict()  # a setting newer than the checkpoint: its default
    changed = [k for k in now if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k]]
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise SpartaError(f"cannot resume {where}: settings differ from the checkpoint's ({shown})")


# -- the recipe's parts --------------------------------------------------------------------------------------------
def open_run(cfg: TrainConfig, rt: Runtime, log) -> tuple[Path, C.Checkpoint | None]:
    """The checked (and created) output dir, and the checkpoint to continue from when resuming."""
    if rt.sharded and (cfg.save_every or cfg.resume):
        raise SpartaError(
            "checkpoints (--save-every, --resume) are not supported when FSDP or ZeRO-3 shard the parameters yet; "
            "train without them, or use DDP / ZeRO-1/2"
        )
    resume = bool(cfg.resume)
    output = prepare_output(resolve_output(cfg), cfg.overwrite, resume=resume, create=False)
    rt.barrier()
    if rt.is_main:
        prepare_output(output, cfg.overwrite, resume=resume)
    rt.barrier()
    if not resume:
        return output, None
    ckpt = C.load_checkpoint(C.latest_checkpoint(output))
    check_resumable(cfg, ckpt.state["config"], ckpt.path)
    if len(ckpt.rng) != rt.world:
        raise SpartaError(f"{ckpt.path} was written by {len(ckpt.rng)} process(es); resume with as many")
    log(f"resuming from {ckpt.path} (step {ckpt.step})")
    return output, ckpt


def encode_splits(cfg: TrainConfig, task, tokenizer, instruct: bool, context: int | None, log):
    """(raw splits, encoded splits, max length): training examples over the max length are dropped, dev and test
    examples are truncated to the model's context instead."""
    from sparta.tasks import load_splits

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
    log(f"classes (training examples): {class_counts(task.label_names, train_data.labels)}")
    return splits, enc, max_length


@dataclass
class Schedule:
    """How many optimizer steps a run takes, and when it warms up and evaluates."""

    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    eval_every: int

    @classmethod
    def plan(cls, cfg: TrainConfig, n_train: int, world: int) -> Schedule:
        """Each step takes a global batch of batch_size examples per process, times grad_accum."""
        global_batch = cfg.batch_size * world
        steps_per_epoch = max(1, math.ceil(math.ceil(n_train / global_batch) / cfg.grad_accum))
        total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total)
        return cls(global_batch, steps_per_epoch, total, warmup, cfg.eval_every or steps_per_epoch)


def build_optimizer(model: nn.Module, cfg: TrainConfig, plan: Schedule):
    """AdamW over the trainable parameters (no decay on biases and norms) and the learning-rate schedule."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(M.decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    name = "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=plan.warmup, num_training_steps=plan.total_steps
    )
    return optimizer, scheduler


def restore_checkpoint(
    ckpt: C.Checkpoint, net: nn.Module, optimizer, scheduler, stopper: EarlyStopping
) -> None:
    """Load a checkpoint's trainable state, optimizer, schedule and early-stopping record."""
    C.check_trainable(M.trainable_state(net), ckpt.trainable, ckpt.path)
    M.load_trainable_state(net, ckpt.trainable)
    optimizer.load_state_dict(ckpt.optimizer)
    scheduler.load_state_dict(ckpt.scheduler)
    for key, value in ckpt.state["stopper"].items():
        setattr(stopper, key, value)
    stopper.best_state = ckpt.best


def step_loss_and_backward(model, chunk, train_data, cfg: TrainConfig, rt: Runtime, pad_id, device) -> float:
    """Forward and backward over one optimizer step's micro-batches; the mean loss over the global batch."""
    n_step = sum(len(idx) for idx in chunk)  # examples in this step, over all processes
    step_loss = 0.0
    for k, global_idx in enumerate(chunk):
        idx, weight = rank_slice(global_idx, rt, cfg.batch_size)
        with rt.no_sync(model, skip=k < len(chunk) - 1):
            part = batch_loss(model, train_data, idx, pad_id, cfg.padding_side, device) / n_step
            # DDP averages gradients over ranks; the world factor turns that into the global-batch mean
            (part * (weight * rt.world)).backward()
        step_loss += part.item() * weight
    return rt.sum(step_loss)


def clip_gradients(model, params: list, max_norm: float | None, rt: Runtime) -> None:
    if max_norm is None:
        return
    if rt.distributed:
        rt.accelerator.clip_grad_norm_(model.parameters(), max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def write_outputs(
    output: Path, net: nn.Module, tokenizer, cfg: TrainConfig, rt: Runtime, run_info: dict
) -> Path:
    """Adapter (or model), tokenizer and run.json, each written whole by rank 0; the adapter's path."""
    adapter_path = output / run_info["adapter"]
    with rt.full_parameters(net):  # sharded parameters: gathered on every rank, saved by rank 0
        if rt.is_main:
            adapter_path = M.save_adapter(net, cfg.method, output, cfg)
    if rt.is_main:
        with C.atomic_dir(output / TOKENIZER_DIR) as tmp:
            tokenizer.save_pretrained(str(tmp))
        write_json(output / RUN_FILE, run_info)
    return adapter_path


# -- the recipe --------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, log=print) -> dict[str, Any]:
    """Run one training job as `cfg` says; writes the output dir and returns the results dict.

    Under `accelerate launch` every rank runs this function; rank 0 alone writes files, logs and the progress bar.
    """
    from sparta.tasks import format_input

    rt = Runtime.from_launch(cfg.device) if launched_distributed() else Runtime.single()
    if not rt.is_main:
        log = _quiet
    log(rt.describe())
    targs = task_args(cfg)
    task = build_task(targs)  # before open_run: a data error must not cost the run that --overwrite replaces
    output, ckpt = open_run(cfg, rt, log)
    seed_everything(cfg.seed)
    device, dtype = pick_device(cfg.device, cfg.dtype)
    device = rt.device(device)

    # model, tokenizer, data
    resolved, model, tokenizer = load_model_and_tokenizer(cfg.model, task.num_labels, dtype, cfg.padding_side)
    instruct = bool(getattr(resolved, "instruct", False))
    pad_id = tokenizer.pad_token_id
    context = getattr(model.config, "max_position_embeddings", None)
    splits, enc, max_length = encode_splits(cfg, task, tokenizer, instruct, context, log)
    train_data = enc["train"]

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
    net = model  # the unwrapped model: evaluation, trainable state and saving use it, never the DDP wrapper
    run_eval = lambda split: evaluate(net, enc[split], task, eval_bs, pad_id, cfg.padding_side, device, rt)  # noqa: E731
    zero_shot = None
    if ckpt is not None:
        zero_shot = ckpt.state["zero_shot"]
    elif cfg.zero_shot:
        zero_shot = {s: run_eval(s) for s in ("dev", "test") if len(enc[s])}
        for s, m in zero_shot.items():
            log(f"zero-shot {s}: {_fmt(m)}")
    model = net = M.apply_method(model, cfg)
    if hasattr(net, "set_merge_mode"):  # SpaRTA: functional where the engine shards parameters
        net.set_merge_mode(rt.merge_mode)
    model.to(device)
    model.train()
    trainable, total = M.count_parameters(model)
    log(
        f"method {cfg.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.4f}%)"
    )
    if cfg.method == "sparta" and device.type == "cpu":
        log(f"delta-gradient kernel: {native.status()}")

    # optimizer, schedule, early stopping, batch order (all continued from a checkpoint when resuming)
    plan = Schedule.plan(cfg, len(train_data), rt.world)
    optimizer, scheduler = build_optimizer(model, cfg, plan)
    has_dev = len(enc["dev"]) > 0
    stopper = EarlyStopping(cfg.early_stopping_patience)
    stream = D.BatchStream(train_data.lengths, plan.global_batch, cfg.seed)
    prog = Progress()
    if ckpt is not None:
        restore_checkpoint(ckpt, net, optimizer, scheduler, stopper)
        stream = D.BatchStream(train_data.lengths, plan.global_batch, cfg.seed, **ckpt.state["stream"])
        prog = Progress(**ckpt.state["progress"])
    raw_optimizer = optimizer
    model, optimizer = rt.prepare(model, optimizer)
    params = [p for p in net.parameters() if p.requires_grad]

    # the loop
    from tqdm.auto import tqdm

    columns = ["step", "epoch", "lr", "train_loss", "examples_per_s", "dev_loss"]
    columns += [f"dev_{m}" for m in task.metrics]
    logger = RunLogger(output, columns, resume_step=prog.step if ckpt else None) if rt.is_main else None
    stopped_early = False
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if ckpt is not None:
        C.set_rng_state(*ckpt.rng[rt.rank])
    bar = tqdm(
        total=plan.total_steps,
        initial=prog.step,
        desc=f"{cfg.method} {task.name}",
        unit="step",
        disable=not (cfg.progress and rt.is_main),
    )
    try:
        for step in range(prog.step + 1, plan.total_steps + 1):
            t0 = time.perf_counter()
            chunk = [next(stream) for _ in range(cfg.grad_accum)]
            step_loss = step_loss_and_backward(model, chunk, train_data, cfg, rt, pad_id, device)
            if not math.isfinite(step_loss):
                saved_ckpt = C.latest_checkpoint(output)
                raise SpartaError(
                    f"training loss is {step_loss} at step {step}: the run diverged; lower --lr (now {cfg.lr}) "
                    "or check the data. "
                    + (
                        f"The last good checkpoint is {saved_ckpt}."
                        if saved_ckpt
                        else "No checkpoint was written."
                    )
                )
            clip_gradients(model, params, cfg.max_grad_norm, rt)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            prog.step = step
            prog.train_seconds += time.perf_counter() - t0
            prog.seen += sum(len(idx) for idx in chunk)
            prog.window_loss, prog.window_n = prog.window_loss + step_loss, prog.window_n + 1
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", ex_s=f"{prog.seen / prog.train_seconds:.1f}")

            do_eval = has_dev and (step % plan.eval_every == 0 or step == plan.total_steps)
            if step % cfg.log_every == 0 or do_eval or step == plan.total_steps:
                entry = {"step": step, "train_loss": prog.window_loss / prog.window_n}
                row = {
                    **entry,
                    "epoch": round(prog.seen / len(train_data), 4),
                    "lr": scheduler.get_last_lr()[0],
                    "examples_per_s": prog.seen / prog.train_seconds,
                }
                prog.window_loss, prog.window_n = 0.0, 0
                if do_eval:
                    prog.last_dev = run_eval("dev")
                    entry["dev_loss"] = prog.last_dev["loss"]
                    row.update({f"dev_{k}": v for k, v in prog.last_dev.items()})
                    stopped_early = stopper.update(net, step, prog.last_dev, keep_state=cfg.restore_best)
                    if rt.is_main:
                        bar.write(
                            f"step {step}: train_loss={entry['train_loss']:.4f} dev: {_fmt(prog.last_dev)}"
                        )
                prog.history.append(entry)
                if logger is not None:
                    logger.log(row)
                if stopped_early:
                    log(
                        f"early stopping at step {step}: no lower dev loss for {stopper.bad_evals} evaluations"
                    )
                    break
            if cfg.save_every and step % cfg.save_every == 0 and step < plan.total_steps:
                state = {
                    "config": cfg.to_dict(),
                    "stream": stream.state(),
                    "stopper": stopper.state(),
                    "progress": dataclasses.asdict(prog),
                    "zero_shot": zero_shot,
                }
                rng = rt.gather(C.rng_state())
                if rt.is_main:
                    C.save_checkpoint(
                        output,
                        step,
                        M.trainable_state(net),
                        raw_optimizer.state_dict(),
                        scheduler.state_dict(),
                        rng,
                        state,
                        best=stopper.best_state,
                        keep=cfg.keep_checkpoints,
                    )
                rt.barrier()
            _crash_for_tests(step)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    step = prog.step
    # (sharded parameters are one copy by construction: nothing to compare)
    if rt.distributed and not rt.sharded and len(set(rt.gather(state_digest(net)))) != 1:
        raise SpartaError("the processes ended with different weights; the distributed run is inconsistent")

    # restore the best state, final metrics
    restored = cfg.restore_best and stopper.best_state is not None and stopper.best_step != step
    if restored:
        M.load_trainable_state(net, stopper.best_state)
        log(f"restored the trainable state of step {stopper.best_step} (dev loss {stopper.best_loss:.4f})")
    stopper.best_state = None
    metrics = {}
    if has_dev:
        metrics["dev"] = stopper.best_metrics if restored else prog.last_dev
    if len(enc["test"]):
        metrics["test"] = run_eval("test")
    for s, m in metrics.items():
        log(f"{s}: {_fmt(m)}")

    # save (rank 0): adapter, tokenizer, run.json, results.json - each written whole, results.json last
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
        "adapter": M.MODEL_DIR if cfg.method == "full" else M.ADAPTER_DIR,
    }
    adapter_path = write_outputs(output, net, tokenizer, cfg, rt, run_info)
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
        "train_seconds": prog.train_seconds,
        "train_examples_per_s": prog.seen / prog.train_seconds if prog.train_seconds else None,
        "adapter_bytes": M.dir_bytes(adapter_path) if rt.is_main else None,
        "adapter_path": str(adapter_path),
        "steps": step,
        "epochs": prog.seen / len(train_data),
        "best_step": stopper.best_step,
        "restored_best": restored,
        "stopped_early": stopped_early,
        "resumed_from_step": ckpt.step if ckpt is not None else None,
        "processes": rt.world,
        "data": {
            "train": len(train_data),
            "train_dropped_too_long": train_data.dropped,
            "max_length": max_length,
            "dev": len(enc["dev"]),
            "test": len(enc["test"]),
        },
        "device": str(device),
        "dtype": run_info["dtype"],
        "history": prog.history,
        "versions": _versions(),
    }
    if rt.is_main:
        write_json(output / RESULTS_FILE, results)
        log(f"wrote {output / RESULTS_FILE}")
    rt.barrier()
    return results


def _quiet(*args: Any, **kwargs: Any) -> None:
    """The log function of ranks other than 0."""


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
