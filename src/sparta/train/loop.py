"""The training recipe: one readable `train(cfg)` made of plain named steps (torchtune-recipe style).

the task and its objective -> open the run dir -> set up (seeds, device, model, tokenizer, data, head) -> zero-shot
evaluation -> apply the method -> AdamW and schedule (continued from a checkpoint when resuming) -> optimizer
steps with gradient accumulation, clipping, periodic dev evaluation, checkpoints and early stopping -> restore
the best trainable state -> final dev/test metrics -> adapter, tokenizer, run.json and results.json.

What depends on the kind of task (encoding, loss, metrics, head) is asked of the objective
(`sparta.objectives`); what depends on the method (which parameters train, what is saved) of the method
(`sparta.methods`); nothing here tests a task or method name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from sparta.errors import SpartaError
from sparta.fileio import write_json
from sparta.methods import (
    decay_groups,
    load_trainable_state,
    trainable_state,
)
from sparta.objectives.batching import BatchStream
from sparta.precision import autocast, grad_scaler
from sparta.runs.layout import (
    RESULTS_FILE,
)
from sparta.train import checkpoint
from sparta.train.config import TrainConfig
from sparta.train.distributed import Runtime, launched_distributed
from sparta.train.logs import RunLogger
from sparta.train.outputs import results_document, run_info, write_examples, write_outputs
from sparta.train.rates import resolve_lr
from sparta.train.schedule import Schedule
from sparta.train.setup import Setup, apply_method, choose_precision, choose_task, open_run, set_up
from sparta.train.stopping import EarlyStopping

logger = logging.getLogger(__name__)


# -- optimisation ------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """The loop's counters: everything besides tensors that a checkpoint needs to continue exactly."""

    step: int = 0
    seen: int = 0
    train_seconds: float = 0.0
    window_loss: float = 0.0
    window_n: int = 0
    work: int = 0  # the objective's work units trained on (examples, or tokens): the progress bar's rate
    history: list = field(default_factory=list)
    last_dev: dict = field(default_factory=dict)


@dataclass
class Optimisation:
    """The optimizer, its schedule, early stopping, the batch stream and the counters of one run."""

    plan: Schedule
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stopper: EarlyStopping
    stream: BatchStream
    progress: Progress
    scaler: torch.amp.GradScaler | None = None  # fp16-mixed's loss scaler (`sparta.precision.grad_scaler`)


def build_optimizer(model: nn.Module, cfg: TrainConfig, plan: Schedule):
    """AdamW over the trainable parameters (no decay on biases and norms) and the learning-rate schedule."""
    optimizer = torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    name = "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=plan.warmup, num_training_steps=plan.total_steps
    )
    return optimizer, scheduler


def build_optimisation(cfg: TrainConfig, net: nn.Module, s: Setup, rt: Runtime, ckpt) -> Optimisation:
    """AdamW, schedule, early stopping, batch order and loss scaler; all continued from `ckpt` when resuming."""
    train_data = s.enc["train"]
    plan = Schedule.plan(cfg, len(train_data), rt.world)
    optimizer, scheduler = build_optimizer(net, cfg, plan)
    stopper = EarlyStopping(cfg.early_stopping_patience)
    scaler = grad_scaler(s.precision, s.device)
    if ckpt is None:
        stream = BatchStream(train_data.lengths, plan.global_batch, cfg.seed)
        return Optimisation(plan, optimizer, scheduler, stopper, stream, Progress(), scaler)
    checkpoint.check_trainable(trainable_state(net), ckpt.trainable, ckpt.path)
    load_trainable_state(net, ckpt.trainable)
    optimizer.load_state_dict(ckpt.optimizer)
    scheduler.load_state_dict(ckpt.scheduler)
    for key, value in ckpt.state["stopper"].items():
        setattr(stopper, key, value)
    stopper.best_state = ckpt.best
    stream = BatchStream(train_data.lengths, plan.global_batch, cfg.seed, **ckpt.state["stream"])
    if scaler is not None:
        scaler.load_state_dict(ckpt.state["scaler"])
    return Optimisation(
        plan, optimizer, scheduler, stopper, stream, Progress(**ckpt.state["progress"]), scaler
    )


def rank_slice(global_idx: list[int], rt: Runtime, batch_size: int) -> tuple[list[int], float]:
    """This rank's contiguous slice of a global batch, and its weight (0: an empty slice, run on a stand-in)."""
    if not rt.distributed:
        return global_idx, 1.0
    idx = global_idx[rt.rank * batch_size : (rt.rank + 1) * batch_size]
    return (idx, 1.0) if idx else (global_idx[:1], 0.0)


def step_loss_and_backward(model, chunk, s: Setup, cfg: TrainConfig, rt: Runtime, scaler=None) -> float:  # noqa: ANN001
    """Forward (in the run's precision) and backward over one optimizer step's micro-batches; the mean loss over
    the global batch. `scaler`: fp16-mixed's loss scaler, which scales what backward sees (not the loss)."""
    train_data, objective = s.enc["train"], s.objective
    n_step = sum(
        objective.units(train_data, idx) for idx in chunk
    )  # what the loss averages over, all processes
    step_loss = 0.0
    for k, global_idx in enumerate(chunk):
        idx, weight = rank_slice(global_idx, rt, cfg.batch_size)
        with rt.no_sync(model, skip=k < len(chunk) - 1):
            with autocast(s.precision, s.device):  # the forward only: backward follows the forward's dtypes
                pad_id = s.tokenizer.pad_token_id
                loss = objective.batch_loss(model, train_data, idx, pad_id, cfg.padding_side, s.device)
            part = loss.float() / n_step
            # DDP averages gradients over ranks; the world factor turns that into the global-batch mean
            scaled = part * (weight * rt.world)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        step_loss += part.item() * weight
    return rt.sum(step_loss)


def clip_gradients(model, params: list, max_norm: float | None, rt: Runtime) -> None:
    if max_norm is None:
        return
    if rt.distributed:
        rt.accelerator.clip_grad_norm_(model.parameters(), max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def check_finite(step_loss: float, step: int, cfg: TrainConfig, output: Path) -> None:
    if math.isfinite(step_loss):
        return
    saved = checkpoint.latest_checkpoint(output)
    raise SpartaError(
        f"training loss is {step_loss} at step {step}: the run diverged; lower --lr (now {cfg.lr}) or check the "
        "data. " + (f"The last good checkpoint is {saved}." if saved else "No checkpoint was written.")
    )


def save_checkpoint(
    cfg: TrainConfig, output: Path, net: nn.Module, opt: Optimisation, zero_shot, rt: Runtime
) -> None:
    """Write OUTPUT/checkpoint-STEP (rank 0) with everything needed to continue bitwise."""
    state = {
        "stream": opt.stream.state(),
        "stopper": opt.stopper.state(),
        "progress": dataclasses.asdict(opt.progress),
        "zero_shot": zero_shot,
        "scaler": opt.scaler.state_dict() if opt.scaler is not None else None,
    }
    write_checkpoint(
        cfg,
        output,
        net,
        opt.optimizer,
        opt.scheduler,
        opt.progress.step,
        state,
        rt,
        best=opt.stopper.best_state,
    )


def write_checkpoint(
    cfg: TrainConfig,
    output: Path,
    net: nn.Module,
    optimizer,
    scheduler,
    step: int,
    state: dict,
    rt: Runtime,
    best: dict | None = None,
) -> None:
    """OUTPUT/checkpoint-STEP, written by rank 0: the trainable state, optimizer, schedule, every rank's random
    state, the config and a recipe's own `state` (its counters); then every rank waits for it."""
    rng = rt.gather(checkpoint.rng_state())
    if rt.is_main:
        checkpoint.save_checkpoint(
            output,
            step,
            trainable_state(net),
            optimizer.state_dict(),
            scheduler.state_dict(),
            rng,
            {"config": cfg.to_dict(), **state},
            best=best,
            keep=cfg.keep_checkpoints,
        )
    rt.barrier()


# -- the loop ------------------------------------------------------------------------------------------------------
def run_steps(
    cfg: TrainConfig,
    s: Setup,
    *,
    prepared: nn.Module,
    optimizer: torch.optim.Optimizer,
    net: nn.Module,
    opt: Optimisation,
    run_eval: Callable[..., dict],
    output: Path,
    rt: Runtime,
    zero_shot: dict | None,
    on_step: Callable[[int], None] | None,
) -> bool:
    """Optimizer steps until the plan's last step or early stopping; True when stopped early.

    `prepared` and `optimizer` are what the runtime made of the model and `opt.optimizer` (DDP wraps them);
    `net` is the unwrapped model that evaluation, checkpoints and saving use; `zero_shot` (the metrics before
    training, None when skipped) goes into every checkpoint; `on_step(step)` is called after every step.
    """
    train_data, plan, prog = s.enc["train"], opt.plan, opt.progress
    has_dev = len(s.enc["dev"]) > 0
    columns = ["step", "epoch", "lr", "train_loss", "examples_per_s", "dev_loss"]
    columns += [f"dev_{m}" for m in s.objective.metric_names(s.task)]
    resumed = prog.step > 0
    log = RunLogger(output, columns, resume_step=prog.step if resumed else None) if rt.is_main else None
    params = [p for p in net.parameters() if p.requires_grad]
    bar = tqdm(
        total=plan.total_steps,
        initial=prog.step,
        desc=f"{cfg.method} {s.task.name}",
        unit="step",
        disable=not (cfg.progress and rt.is_main),
    )
    try:
        for step in range(prog.step + 1, plan.total_steps + 1):
            t0 = time.perf_counter()
            chunk = [next(opt.stream) for _ in range(cfg.grad_accum)]
            step_loss = step_loss_and_backward(prepared, chunk, s, cfg, rt, opt.scaler)
            check_finite(step_loss, step, cfg, output)
            # fp16-mixed: unscaled gradients for clipping; the scaler skips a step whose gradients hold inf/NaN
            if opt.scaler is not None:
                opt.scaler.unscale_(optimizer)
            clip_gradients(prepared, params, cfg.max_grad_norm, rt)
            if opt.scaler is not None:
                opt.scaler.step(optimizer)
                opt.scaler.update()
            else:
                optimizer.step()
            opt.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            prog.step, prog.train_seconds = step, prog.train_seconds + time.perf_counter() - t0
            prog.seen += sum(len(idx) for idx in chunk)
            prog.work += sum(s.objective.work(train_data, idx) for idx in chunk)
            prog.window_loss, prog.window_n = prog.window_loss + step_loss, prog.window_n + 1
            bar.update(1)
            rate = {f"{s.objective.work_unit}_s": f"{prog.work / prog.train_seconds:.1f}"}
            bar.set_postfix(loss=f"{step_loss:.4f}", **rate)
            do_eval = has_dev and (step % plan.eval_every == 0 or step == plan.total_steps)
            logged = step % cfg.log_every == 0 or do_eval or step == plan.total_steps
            if logged and log_and_evaluate(cfg, net, opt, train_data, step, do_eval, run_eval, log, bar, rt):
                logger.info(
                    f"early stopping at step {step}: no lower dev loss for {opt.stopper.bad_evals} evaluations"
                )
                return True
            if cfg.save_every and step % cfg.save_every == 0 and step < plan.total_steps:
                save_checkpoint(cfg, output, net, opt, zero_shot, rt)
            if on_step is not None:
                on_step(step)
    finally:
        bar.close()
        if log is not None:
            log.close()
    return False


def log_and_evaluate(cfg, net, opt: Optimisation, train_data, step, do_eval, run_eval, log, bar, rt) -> bool:
    """One log row (and a dev evaluation when due); True when early stopping says stop."""
    prog = opt.progress
    entry = {"step": step, "train_loss": prog.window_loss / prog.window_n}
    row = {
        **entry,
        "epoch": round(prog.seen / len(train_data), 4),
        "lr": opt.scheduler.get_last_lr()[0],
        "examples_per_s": prog.seen / prog.train_seconds,
    }
    prog.window_loss, prog.window_n = 0.0, 0
    stop = False
    if do_eval:
        prog.last_dev = run_eval("dev")
        entry["dev_loss"] = prog.last_dev["loss"]
        row.update({f"dev_{k}": v for k, v in prog.last_dev.items()})
        stop = opt.stopper.update(net, step, prog.last_dev, keep_state=cfg.restore_best)
        if rt.is_main:
            bar.write(f"step {step}: train_loss={entry['train_loss']:.4f} dev: {_fmt(prog.last_dev)}")
    prog.history.append(entry)
    if log is not None:
        log.log(row)
    return stop


def state_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter (merged SpaRTA weights included): equal on all ranks of a healthy DDP run."""
    if hasattr(model, "sync_weights"):
        model.sync_weights()
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def final_metrics(cfg, net, opt: Optimisation, s: Setup, run_eval, examples: list) -> tuple[dict, bool]:
    """Restore the best trainable state (lowest dev loss) and take the final dev and test metrics (dev is taken
    again where the final metrics hold more than the dev evaluations during training: generations); the test
    split's per-example scores go into `examples`."""
    stopper, step = opt.stopper, opt.progress.step
    restored = cfg.restore_best and stopper.best_state is not None and stopper.best_step != step
    if restored:
        load_trainable_state(net, stopper.best_state)
        logger.info(
            f"restored the trainable state of step {stopper.best_step} (dev loss {stopper.best_loss:.4f})"
        )
    stopper.best_state = None
    metrics = {}
    if len(s.enc["dev"]):
        metrics["dev"] = stopper.best_metrics if restored else opt.progress.last_dev
        during, final = (s.objective.eval_options(cfg, s.task, s.tokenizer, final=f) for f in (False, True))
        if final != during:
            metrics["dev"] = run_eval("dev", final=True)
    if len(s.enc["test"]):
        metrics["test"] = run_eval("test", final=True, records=examples)
    for split, m in metrics.items():
        logger.info(f"{split}: {_fmt(m)}")
    return metrics, restored


# -- the recipe --------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run one training job as `cfg` says; writes the output dir and returns the results dict.

    `on_step(step)` is called after every optimizer step (and its checkpoint, if one is due). Under
    `accelerate launch` every rank runs this function; rank 0 alone writes files, logs and the progress bar.
    """
    rt = Runtime.from_launch(cfg.device) if launched_distributed() else Runtime.single()
    with _rank_zero_logging(rt):
        logger.info(rt.describe())  # processes and backend first: a launch that started fewer shows at once
        # (task arguments, task, objective): bad task or data settings fail before the run dir is touched
        chosen = choose_task(cfg)
        # lr None: the default of the method and objective, which the run uses and results.json records
        cfg, lr_note = resolve_lr(cfg, chosen[2].name)
        if lr_note:
            logger.info(lr_note)
        # the precision resolved for this device (asked for, accelerate's launch setting, or the default)
        cfg, precision = choose_precision(cfg, rt)
        logger.info(precision.describe())
        output, ckpt = open_run(cfg, rt)
        s = set_up(cfg, rt, chosen, precision)

        def run_eval(  # noqa: E306
            split: str, model: nn.Module | None = None, final: bool = False, records: list | None = None
        ) -> dict:
            """`final`: the zero-shot or final metrics, which may hold more than the loss (the objective's);
            `records`: filled with the split's per-example scores."""
            eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
            options = s.objective.eval_options(cfg, s.task, s.tokenizer, final)
            if records is not None:
                options["records"] = records
            data, pad_id = s.enc[split], s.tokenizer.pad_token_id
            with autocast(s.precision, s.device):
                return s.objective.evaluate(
                    model or net, data, s.task, eval_bs, pad_id, cfg.padding_side, s.device, rt, **options
                )

        zero_shot = ckpt.state["zero_shot"] if ckpt is not None else None
        if ckpt is None and cfg.zero_shot:
            zero_shot_examples: list = []
            zero_shot = {
                split: run_eval(
                    split, s.model, final=True, records=zero_shot_examples if split == "test" else None
                )
                for split in ("dev", "test")
                if len(s.enc[split])
            }
            if rt.is_main and zero_shot_examples:
                write_examples(output, "zero-shot.test", zero_shot_examples)
            for split, m in zero_shot.items():
                logger.info(f"zero-shot {split}: {_fmt(m)}")
        net = apply_method(
            cfg, s, rt
        )  # the unwrapped model: evaluation, state and saving use it, never DDP's
        # (preference: the reference, on the unwrapped model, before any step)
        with autocast(s.precision, s.device):
            s.objective.prepare(
                net,
                s.method,
                cfg,
                s.enc,
                output=output,
                device=s.device,
                pad_id=s.tokenizer.pad_token_id,
                rt=rt,
            )
        opt = build_optimisation(cfg, net, s, rt, ckpt)
        prepared, optimizer = rt.prepare(net, opt.optimizer)
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)
        if ckpt is not None:
            checkpoint.set_rng_state(*ckpt.rng[rt.rank])
        stopped_early = run_steps(
            cfg,
            s,
            prepared=prepared,
            optimizer=optimizer,
            net=net,
            opt=opt,
            run_eval=run_eval,
            output=output,
            rt=rt,
            zero_shot=zero_shot,
            on_step=on_step,
        )
        # (sharded parameters are one copy by construction: nothing to compare)
        if rt.distributed and not rt.sharded and len(set(rt.gather(state_digest(net)))) != 1:
            raise SpartaError(
                "the processes ended with different weights; the distributed run is inconsistent"
            )
        test_examples: list = []
        metrics, restored = final_metrics(cfg, net, opt, s, run_eval, test_examples)
        adapter_path = write_outputs(output, net, cfg, s, rt, run_info(cfg, s))
        if rt.is_main and test_examples:
            write_examples(output, "test", test_examples)
        results = results_document(
            cfg, s, net, opt, metrics, zero_shot, restored, stopped_early, ckpt, adapter_path, rt
        )
        if rt.is_main:  # results.json last: its presence means the run finished
            write_json(output / RESULTS_FILE, results)
            logger.info(f"wrote {output / RESULTS_FILE}")
        rt.barrier()
    return results


@contextlib.contextmanager
def _rank_zero_logging(rt: Runtime) -> Iterator[None]:
    """Only rank 0 logs sparta's progress: other ranks keep warnings and errors for the duration of a run."""
    root = logging.getLogger("sparta")
    level = root.level
    if not rt.is_main:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
