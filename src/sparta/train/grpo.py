"""The GRPO recipe: online reinforcement learning with verifiable rewards, as one readable `train(cfg)` of named
steps (torchtune-recipe style), beside the training loop rather than bent into it.

The loop's shape does not fit rollouts: its units are known before the forward, it early-stops on a dev loss,
and DDP's wrapper has no `generate`. So RL has its own recipe, which reuses the loop's set-up (`sparta.train.
setup`: task, precision, run dir, model, method), its optimizer and schedule, checkpoints, logs and outputs:

the task and its objective (`--objective grpo`; the arithmetic task's own) -> open the run dir -> set up ->
zero-shot greedy accuracy -> apply the method (and keep its reference if `--kl-coef` > 0) -> AdamW and schedule
-> per rollout step: take `--batch-size` prompts, sample `--num-generations` completions of each from the
current policy (`roll_out`; SpaRTA: the training model itself, its deltas merged in place, nothing to sync),
score them (`sparta.objectives.rewards`), group-normalise the advantages, take the old and reference
log-probs, then `--num-iterations` optimizer steps of the clipped policy-gradient loss (`optimise`; the loss is
`sparta.objectives.grpo`'s) -> count the bytes the update costs to send to a generator (`Method.weight_sync`)
-> log a row, evaluate held-out greedy accuracy every `--eval-every` steps, checkpoint every `--save-every` ->
final dev/test accuracy -> adapter, tokenizer, run.json and results.json.

A step is a rollout batch (`Schedule.plan` over prompts: `--max-steps`, or `--epochs` over the training
prompts); the learning-rate schedule counts optimizer steps (steps x `--num-iterations`). Sampling is seeded
from (seed, step, rank) each step, and a checkpoint holds the trainable state, optimizer, schedule, prompt
order, counters and every generator's state, so a resumed run is bitwise the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparta.errors import SpartaError
from sparta.fileio import write_json
from sparta.methods import count_parameters, load_trainable_state, trainable_state
from sparta.objectives.batching import BatchStream
from sparta.objectives.generation import generate_tokens, stop_token_ids
from sparta.objectives.grpo import clipped_loss, completion_logps, group_advantages
from sparta.objectives.rewards import Reward, parse_rewards, score
from sparta.precision import autocast, grad_scaler
from sparta.runs.layout import RESULTS_FILE
from sparta.train import checkpoint
from sparta.train.config import TrainConfig
from sparta.train.distributed import Runtime, launched_distributed
from sparta.train.logs import RunLogger, peak_memory_mb
from sparta.train.loop import (
    _fmt,
    _rank_zero_logging,
    build_optimizer,
    clip_gradients,
    rank_slice,
    state_digest,
    write_checkpoint,
)
from sparta.train.outputs import run_info, write_examples, write_outputs
from sparta.train.rates import resolve_lr
from sparta.train.schedule import Schedule
from sparta.train.setup import Setup, apply_method, choose_precision, choose_task, open_run, set_up

logger = logging.getLogger(__name__)
STEP_COLUMNS = [
    "step",
    "updates",
    "lr",
    "loss",
    "reward",
    "reward_std",
    "completion_length",
    "truncated",
    "clip_fraction",
    "kl",
    "generation_s",
    "training_s",
    "sync_bytes",
    "model_bytes",
]


# -- state ---------------------------------------------------------------------------------------------------------
@dataclass
class RLProgress:
    """The counters a checkpoint needs besides tensors."""

    step: int = 0  # rollout steps done
    updates: int = 0  # optimizer steps done
    prompts: int = 0
    generation_seconds: float = 0.0
    train_seconds: float = 0.0
    history: list = field(default_factory=list)
    last_dev: dict = field(default_factory=dict)


@dataclass
class RLOptimisation:
    plan: Schedule  # in rollout steps
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stream: BatchStream  # the prompt order
    progress: RLProgress
    scaler: torch.amp.GradScaler | None = None


def build_rl_optimisation(cfg: TrainConfig, net: nn.Module, s: Setup, rt: Runtime, ckpt) -> RLOptimisation:
    """AdamW and its schedule over optimizer steps, the prompt stream and counters; continued from `ckpt`."""
    train_data = s.enc["train"]
    plan = Schedule.plan(cfg, len(train_data), rt.world)
    k = cfg.num_iterations
    optimizer, scheduler = build_optimizer(
        net, cfg, dataclasses.replace(plan, total_steps=plan.total_steps * k, warmup=plan.warmup * k)
    )
    scaler = grad_scaler(s.precision, s.device)
    if ckpt is None:
        stream = BatchStream(train_data.lengths, plan.global_batch, cfg.seed)
        return RLOptimisation(plan, optimizer, scheduler, stream, RLProgress(), scaler)
    checkpoint.check_trainable(trainable_state(net), ckpt.trainable, ckpt.path)
    load_trainable_state(net, ckpt.trainable)
    optimizer.load_state_dict(ckpt.optimizer)
    scheduler.load_state_dict(ckpt.scheduler)
    stream = BatchStream(train_data.lengths, plan.global_batch, cfg.seed, **ckpt.state["stream"])
    if scaler is not None:
        scaler.load_state_dict(ckpt.state["scaler"])
    return RLOptimisation(plan, optimizer, scheduler, stream, RLProgress(**ckpt.state["progress"]), scaler)


# -- rollouts ------------------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One rollout batch on this rank: G completions per prompt, in prompt order (group k: rows kG..kG+G-1)."""

    prompts: list[list[int]]
    completions: list[list[int]]
    rewards: torch.Tensor  # (N,) weighted totals
    parts: dict[str, list[float]]  # each reward's unweighted values
    advantages: torch.Tensor  # (N,)
    truncated: list[bool]
    old: list[
        torch.Tensor | None
    ]  # per group: per-token log-probs of the sampling policy (None: the current)
    reference: list[torch.Tensor | None]  # per group: the reference's (None: no KL term)


def sampling_seed(seed: int, step: int, rank: int) -> int:
    """The seed of step `step`'s sampling on `rank`: a function of the run's seed, so resuming repeats it."""
    return (seed * 1_000_003 + step) * 1_009 + rank


def roll_out(
    cfg: TrainConfig, s: Setup, net: nn.Module, idx: list[int], step: int, rt: Runtime, rewards: list[Reward]
) -> Rollout:
    """Sample, score and prepare one rollout batch from the prompts `idx` (the unwrapped model generates)."""
    data, g = s.enc["train"], cfg.num_generations
    prompts = [data.prompts[i] for i in idx for _ in range(g)]
    with autocast(s.precision, s.device):
        completions = generate_tokens(
            net,
            s.tokenizer,
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=sampling_seed(cfg.seed, step, rt.rank),
            batch_size=cfg.eval_batch_size or len(prompts),
        )
    stops = set(stop_token_ids(s.tokenizer, net))
    truncated = [not c or c[-1] not in stops for c in completions]
    texts = [s.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    rows = [i for i in idx for _ in range(g)]
    infos = [
        {
            "prompt": data.texts[i],
            "tokens": len(c),
            "max_new_tokens": cfg.max_new_tokens,
            "truncated": t,
            "task": s.task,
        }
        for i, c, t in zip(rows, completions, truncated, strict=True)
    ]
    totals, parts = score(rewards, texts, [data.references[i] for i in rows], infos)
    reward = torch.tensor(totals, dtype=torch.float32)
    advantages = group_advantages(reward.view(-1, g), scale=cfg.grpo_loss == "grpo").reshape(-1)
    groups = [slice(k * g, (k + 1) * g) for k in range(len(idx))]
    old: list[torch.Tensor | None] = [None] * len(groups)
    reference: list[torch.Tensor | None] = [None] * len(groups)
    pad = s.tokenizer.pad_token_id
    with torch.no_grad(), autocast(s.precision, s.device):
        if cfg.num_iterations > 1:  # the sampling policy's log-probs, before its first update
            was = net.training
            net.eval()
            old = [completion_logps(net, prompts[k], completions[k], pad, s.device) for k in groups]
            net.train(was)
        if cfg.kl_coef > 0:
            with s.method.reference(net) as ref:
                was = ref.training
                ref.eval()
                reference = [completion_logps(ref, prompts[k], completions[k], pad, s.device) for k in groups]
                ref.train(was)
    return Rollout(prompts, completions, reward, parts, advantages, truncated, old, reference)


# -- optimisation --------------------------------------------------------------------------------------------------
def optimise(
    cfg: TrainConfig,
    s: Setup,
    prepared: nn.Module,
    optimizer,
    net: nn.Module,
    opt: RLOptimisation,
    roll: Rollout,
    rt: Runtime,
    output: Path,
) -> dict[str, float]:
    """`--num-iterations` optimizer steps of the GRPO loss on one rollout batch, one group per forward; the
    step's loss, clip fraction and KL (means over every token of every iteration)."""
    g = cfg.num_generations
    groups = [slice(k, k + g) for k in range(0, len(roll.completions), g)]
    tokens = float(sum(len(c) for c in roll.completions))
    # token-level mean (GRPO) or a constant (Dr. GRPO), over the whole rollout batch of every process
    divisor = (
        rt.sum(tokens) if cfg.grpo_loss == "grpo" else rt.world * len(roll.completions) * cfg.max_new_tokens
    )
    params = [p for p in net.parameters() if p.requires_grad]
    loss_sum = clipped = kl_sum = 0.0
    for _ in range(cfg.num_iterations):
        step_loss = 0.0
        for k, rows in enumerate(groups):
            lengths = torch.tensor([len(c) for c in roll.completions[rows]])
            with rt.no_sync(prepared, skip=k < len(groups) - 1):
                with autocast(s.precision, s.device):  # the forward only
                    logps = completion_logps(
                        prepared,
                        roll.prompts[rows],
                        roll.completions[rows],
                        s.tokenizer.pad_token_id,
                        s.device,
                    )
                logps = logps.float()
                advantages = roll.advantages[rows].repeat_interleave(lengths).to(logps.device)
                old = roll.old[k] if roll.old[k] is not None else logps.detach()
                terms = clipped_loss(
                    logps, old.float(), advantages, cfg.epsilon, roll.reference[k], cfg.kl_coef
                )
                part = terms.loss.sum() / divisor
                scaled = part * rt.world  # DDP averages gradients over processes
                (opt.scaler.scale(scaled) if opt.scaler is not None else scaled).backward()
            step_loss += part.item()
            clipped += float(terms.clipped.sum())
            kl_sum += float(terms.kl.sum()) if terms.kl is not None else 0.0
        step_loss = rt.sum(step_loss)
        if not math.isfinite(step_loss):
            saved = checkpoint.latest_checkpoint(output)
            raise SpartaError(
                f"GRPO loss is {step_loss} at step {opt.progress.step + 1}: the run diverged; lower "
                f"--lr (now {cfg.lr})" + (f"; the last good checkpoint is {saved}" if saved else "")
            )
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
        opt.progress.updates += 1
        loss_sum += step_loss
    seen = rt.sum(tokens) * cfg.num_iterations
    return {
        "loss": loss_sum / cfg.num_iterations,
        "clip_fraction": rt.sum(clipped) / seen,
        "kl": rt.sum(kl_sum) / seen if cfg.kl_coef > 0 else float("nan"),
    }


def rollout_metrics(roll: Rollout, rewards: list[Reward], cfg: TrainConfig, rt: Runtime) -> dict[str, float]:
    """Mean reward, its within-group spread, each reward's mean and share, completion length, truncations."""
    n = rt.sum(float(len(roll.completions)))
    g = cfg.num_generations
    out = {
        "reward": rt.sum(float(roll.rewards.sum())) / n,
        "reward_std": rt.sum(float(roll.rewards.view(-1, g).std(dim=1).sum())) / (n / g),
        "completion_length": rt.sum(float(sum(len(c) for c in roll.completions))) / n,
        "truncated": rt.sum(float(sum(roll.truncated))) / n,
    }
    means = {r.name: rt.sum(sum(roll.parts[r.name])) / n for r in rewards}
    weighted = {r.name: r.weight * means[r.name] for r in rewards}
    scale = sum(abs(v) for v in weighted.values())
    for r in rewards:
        out[f"reward_{r.name}"] = means[r.name]
        out[f"share_{r.name}"] = weighted[r.name] / scale if scale else float("nan")
    return out


def save_rl_checkpoint(
    cfg: TrainConfig, output: Path, net: nn.Module, opt: RLOptimisation, zero_shot, rt: Runtime
) -> None:
    state = {
        "stream": opt.stream.state(),
        "progress": dataclasses.asdict(opt.progress),
        "zero_shot": zero_shot,
        "scaler": opt.scaler.state_dict() if opt.scaler is not None else None,
    }
    write_checkpoint(cfg, output, net, opt.optimizer, opt.scheduler, opt.progress.step, state, rt)


# -- the recipe ----------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run one GRPO job as `cfg` says (module docstring); writes the output dir and returns results.json's dict.
    `on_step(step)` is called after every rollout step (and its checkpoint)."""
    rt = Runtime.from_launch(cfg.device) if launched_distributed() else Runtime.single()
    with _rank_zero_logging(rt):
        logger.info(rt.describe())
        chosen = choose_task(cfg)
        rewards = parse_rewards(cfg.rewards)
        cfg, lr_note = resolve_lr(cfg, chosen[2].name)
        if lr_note:
            logger.info(lr_note)
        cfg, precision = choose_precision(cfg, rt)
        logger.info(precision.describe())
        output, ckpt = open_run(cfg, rt)
        s = set_up(cfg, rt, chosen, precision)
        if rt.world > 1 and cfg.batch_size * rt.world > len(s.enc["train"]):
            raise SpartaError(
                f"{rt.world} processes x --batch-size {cfg.batch_size} prompts exceed the "
                f"{len(s.enc['train'])} training prompts"
            )

        def run_eval(split: str, model: nn.Module, records: list | None = None) -> dict:  # noqa: E306
            """`records`: filled with the split's per-prompt scores."""
            options = s.objective.eval_options(cfg, s.task, s.tokenizer, True)
            if records is not None:
                options["records"] = records
            with autocast(s.precision, s.device):
                return s.objective.evaluate(
                    model,
                    s.enc[split],
                    s.task,
                    cfg.eval_batch_size or 2 * cfg.batch_size,
                    s.tokenizer.pad_token_id,
                    cfg.padding_side,
                    s.device,
                    rt,
                    **options,
                )

        zero_shot = ckpt.state["zero_shot"] if ckpt is not None else None
        if ckpt is None and cfg.zero_shot:
            zero_shot_examples: list = []
            zero_shot = {
                split: run_eval(split, s.model, zero_shot_examples if split == "test" else None)
                for split in ("dev", "test")
                if len(s.enc[split])
            }
            if rt.is_main and zero_shot_examples:
                write_examples(output, "zero-shot.test", zero_shot_examples)
            for split, m in zero_shot.items():
                logger.info(f"zero-shot {split}: {_fmt(m)}")
        net = apply_method(cfg, s, rt)
        if cfg.kl_coef > 0:
            s.method.keep_reference(net)  # (full fine-tuning: a frozen copy; adapters: nothing to keep)
        opt = build_rl_optimisation(cfg, net, s, rt, ckpt)
        sync = s.method.weight_sync(net)  # after a resumed state is loaded: what a generator holds now
        prepared, optimizer = rt.prepare(net, opt.optimizer)
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)
        if ckpt is not None:
            checkpoint.set_rng_state(*ckpt.rng[rt.rank])
        run_rollout_steps(
            cfg,
            s,
            prepared=prepared,
            optimizer=optimizer,
            net=net,
            opt=opt,
            rewards=rewards,
            sync=sync,
            run_eval=run_eval,
            output=output,
            rt=rt,
            zero_shot=zero_shot,
            on_step=on_step,
        )
        if rt.distributed and len(set(rt.gather(state_digest(net)))) != 1:
            raise SpartaError(
                "the processes ended with different weights; the distributed run is inconsistent"
            )
        test_examples: list = []
        metrics = {
            split: run_eval(split, net, test_examples if split == "test" else None)
            for split in ("dev", "test")
            if len(s.enc[split])
        }
        for split, m in metrics.items():
            logger.info(f"{split}: {_fmt(m)}")
        adapter_path = write_outputs(output, net, cfg, s, rt, run_info(cfg, s))
        if rt.is_main and test_examples:
            write_examples(output, "test", test_examples)
        results = results_document(cfg, s, net, opt, metrics, zero_shot, ckpt, adapter_path, rt, sync)
        if rt.is_main:
            write_json(output / RESULTS_FILE, results)
            logger.info(f"wrote {output / RESULTS_FILE}")
        rt.barrier()
    return results


def run_rollout_steps(
    cfg: TrainConfig,
    s: Setup,
    *,
    prepared: nn.Module,
    optimizer: torch.optim.Optimizer,
    net: nn.Module,
    opt: RLOptimisation,
    rewards: list[Reward],
    sync: Any,
    run_eval: Callable[..., dict],
    output: Path,
    rt: Runtime,
    zero_shot: dict | None,
    on_step: Callable[[int], None] | None,
) -> None:
    """Rollout steps until the plan's last: sample, score, optimise, log, evaluate, checkpoint."""
    plan, prog = opt.plan, opt.progress
    has_dev = len(s.enc["dev"]) > 0
    names = [r.name for r in rewards]
    columns = [
        *STEP_COLUMNS,
        *(f"reward_{n}" for n in names),
        *(f"share_{n}" for n in names),
        "dev_accuracy",
        "dev_completion_length",
    ]
    log = RunLogger(output, columns, resume_step=prog.step if prog.step else None) if rt.is_main else None
    bar = tqdm(
        total=plan.total_steps,
        initial=prog.step,
        desc=f"grpo {cfg.method} {s.task.name}",
        unit="step",
        disable=not (cfg.progress and rt.is_main),
    )
    try:
        for step in range(prog.step + 1, plan.total_steps + 1):
            idx, _ = rank_slice(next(opt.stream), rt, cfg.batch_size)
            t0 = time.perf_counter()
            roll = roll_out(cfg, s, net, idx, step, rt, rewards)
            t1 = time.perf_counter()
            losses = optimise(cfg, s, prepared, optimizer, net, opt, roll, rt, output)
            t2 = time.perf_counter()
            sync_bytes = sum(u.nbytes for u in sync.changes())
            prog.step, prog.prompts = step, prog.prompts + len(idx) * rt.world
            prog.generation_seconds += t1 - t0
            prog.train_seconds += t2 - t1
            row = {
                "step": step,
                "updates": prog.updates,
                "lr": opt.scheduler.get_last_lr()[0],
                **losses,
                **rollout_metrics(roll, rewards, cfg, rt),
                "generation_s": t1 - t0,
                "training_s": t2 - t1,
                "sync_bytes": sync_bytes,
                "model_bytes": sync.model_bytes,
            }
            if has_dev and (step % plan.eval_every == 0 or step == plan.total_steps):
                prog.last_dev = run_eval("dev", net)
                row.update({f"dev_{k}": v for k, v in prog.last_dev.items()})
                if rt.is_main:
                    bar.write(f"step {step}: reward={row['reward']:.4f} dev: {_fmt(prog.last_dev)}")
            prog.history.append(
                {k: row[k] for k in ("step", "reward", "loss", "completion_length") if k in row}
                | {k: v for k, v in row.items() if k.startswith("dev_")}
            )
            if log is not None and (
                step % cfg.log_every == 0 or "dev_accuracy" in row or step == plan.total_steps
            ):
                log.log(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.3f}", len=f"{row['completion_length']:.0f}")
            if cfg.save_every and step % cfg.save_every == 0 and step < plan.total_steps:
                save_rl_checkpoint(cfg, output, net, opt, zero_shot, rt)
            if on_step is not None:
                on_step(step)
    finally:
        bar.close()
        if log is not None:
            log.close()


def results_document(
    cfg, s: Setup, net, opt: RLOptimisation, metrics, zero_shot, ckpt, adapter_path, rt, sync
) -> dict[str, Any]:
    """results.json of a GRPO run: config, metrics, sizes, timings, the per-step history."""
    prog = opt.progress
    trainable, total = count_parameters(net)
    return {
        "config": cfg.to_dict(),
        "task": s.task.name,
        "method": cfg.method,
        "objective": s.objective.name,
        "model": {"name": cfg.model, "instruct": s.instruct},
        "metrics": metrics,
        "zero_shot": zero_shot,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / total,
        "peak_memory_mb": peak_memory_mb(s.device),
        "steps": prog.step,
        "optimizer_steps": prog.updates,
        "prompts": prog.prompts,
        "rollouts": prog.prompts * cfg.num_generations,
        "generation_seconds": prog.generation_seconds,
        "train_seconds": prog.train_seconds,
        "sync_bytes_per_update": trainable_bytes(net),
        "model_bytes": sync.model_bytes,
        "adapter_path": str(adapter_path),
        "resumed_from_step": ckpt.step if ckpt is not None else None,
        "processes": rt.world,
        "data": {split: len(d) for split, d in s.enc.items()} | s.objective.data_report(s.enc, s.task, cfg),
        "device": str(s.device),
        "precision": {"name": s.precision.name, "reason": s.precision.reason},
        "history": prog.history,
        "versions": _versions(),
    }


def trainable_bytes(net: nn.Module) -> int:
    """Bytes of the trainable tensors (SpaRTA: its m deltas and any head): a whole update's values."""
    return sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)


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
