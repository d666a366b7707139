"""The first steps of a training run: the task and its objective, the output directory (created, or checked for
resuming), then seeds, device, the model and tokenizer, the encoded splits, the head's initial state, and
finally the method applied (with gradient checkpointing turned on before, if asked). `sparta.train.loop.train`
calls these in order."""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparta.errors import SpartaError
from sparta.fileio import read_json
from sparta.methods import Method, count_parameters, get_method, set_dropout
from sparta.models import (
    is_encoder,
    load_model,
    load_tokenizer,
    pick_device,
    quiet_transformers,
    resolve_model,
)
from sparta.objectives import Heads, Objective, objective_for
from sparta.precision import Precision
from sparta.precision import resolve as resolve_precision
from sparta.runs.causal import base_model_of, merged_run_model
from sparta.runs.layout import RUN_FILE, prepare_output
from sparta.tasks import build_task, format_input, load_splits
from sparta.tasks.labels import class_counts
from sparta.tasks.specs import COLUMN_OPTIONS, LANGUAGE_MODELLING, read_columns
from sparta.train import checkpoint
from sparta.train.config import TrainConfig
from sparta.train.distributed import Runtime

logger = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")
# Settings a resumed run may change; every other one must equal the checkpoint's.
RESUMABLE_CHANGES = ("output", "resume", "overwrite", "progress", "save_every", "keep_checkpoints", "device")
# What a checkpoint written before a setting existed ran with (runs before mixed precision were fp32).
IMPLIED_BY_OLDER_CHECKPOINTS = {"precision": "fp32"}


# -- setup -------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def task_args(cfg: TrainConfig) -> dict[str, Any]:
    """Keyword arguments for `sparta.tasks.build_task`, with file paths made absolute (stored in run.json)."""
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
        "keep_calculator": cfg.keep_calculator or None,
        **{k: getattr(cfg, k) for k in COLUMN_OPTIONS},  # config fields named as the TaskSpec's
        "difficulty": cfg.difficulty,
    }
    args: dict[str, Any] = {"name": cfg.task, **{k: v for k, v in overrides.items() if v is not None}}
    if files:
        args["data_files"] = files
        if cfg.objective:  # what a custom task's files hold (a built-in task knows its own objective)
            args["objective"] = cfg.objective
    return args


def choose_task(cfg: TrainConfig, quiet: bool = False) -> tuple[dict[str, Any], Any, Objective]:
    """(task arguments, task, objective): the run's --objective, else the task's (a custom task's told from its
    training file's columns, logged unless `quiet` and written into the task arguments); its settings checked."""
    targs = task_args(cfg)
    task = build_task(targs)
    if "data_files" in targs and "objective" not in targs:
        targs["objective"] = task.objective
        fmt = f", format {task.format}" if task.objective == LANGUAGE_MODELLING else ""
        if not quiet:
            logger.info(
                f"objective {task.objective}{fmt}: told from the columns "
                f"{', '.join(map(repr, read_columns(task)))} of {targs['data_files']['train']}; --objective sets "
                "another"
            )
    objective = objective_for(task, cfg.objective)
    objective.check(cfg)
    get_method(cfg.method).check(cfg, objective)
    return targs, task, objective


def choose_precision(cfg: TrainConfig, rt: Runtime) -> tuple[TrainConfig, Precision]:
    """The run's precision resolved for its device (`sparta.precision.resolve`), written into the config, so
    that results.json and a checkpoint record the precision the run computed in and a resume must keep it."""
    device, _ = pick_device(cfg.device, cfg.dtype)
    chosen = resolve_precision(cfg.precision, rt.device(device))
    return dataclasses.replace(cfg, precision=chosen.name), chosen


def load_model_and_tokenizer(
    model: str,
    objective,
    num_labels: int,
    dtype: torch.dtype,
    padding_side: str,
    init_from: str | None = None,
):
    """(resolved, model, tokenizer) via sparta.models; the tokenizer has a pad token and the given padding side.
    `init_from`: the model is that run's, its adapter merged into the base weights (`merged_run_model`)."""
    resolved = resolve_model(model)
    tokenizer = load_tokenizer(resolved)
    tokenizer.padding_side = padding_side
    if init_from:
        net = init_from_model(init_from, resolved, objective, dtype)
    else:
        with quiet_transformers():  # (num_labels 0: no classification head)
            net = load_model(resolved, task=objective.model_kind, num_labels=num_labels or None, dtype=dtype)
    net.config.pad_token_id = tokenizer.pad_token_id  # the head pools the last token that is not this id
    return resolved, net, tokenizer


def init_from_model(run: str, resolved, objective, dtype: torch.dtype) -> nn.Module:  # noqa: ANN001
    """The SFT run `run`'s model merged into a plain model; it must be a causal LM on the run's base model."""
    if objective.model_kind != "causal-lm":
        raise SpartaError(
            f"--init-from starts from an SFT run's causal LM; the {objective.name} objective does not "
            "train one"
        )
    path = Path(run)
    info = read_json(path / RUN_FILE) if (path / RUN_FILE).is_file() else {}
    base = base_model_of(info) if info else None
    if base is not None and str(base.path) != str(resolved.path):
        raise SpartaError(
            f"--init-from {run} was trained on {info.get('model')}; give --model {info.get('model')}"
        )
    logger.info(
        f"starting from {run}: its adapter merged into the base weights (the new W0 and the reference)"
    )
    return merged_run_model(path, dtype)


def encode_splits(
    cfg: TrainConfig, objective, task, tokenizer, instruct: bool, context: int | None, encoder: bool = False
):
    """(raw splits, encoded splits, max length): training examples over the max length are dropped, dev and test
    examples are truncated to the model's context instead."""
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
    encode, options = objective.encode, objective.encode_options(cfg)
    enc = {
        "train": encode(
            splits["train"], task, tokenizer, instruct, cfg.template, max_length, encoder=encoder, **options
        ),
        **{
            s: encode(
                splits[s], task, tokenizer, instruct, cfg.template, context, True, encoder=encoder, **options
            )
            for s in ("dev", "test")
        },
    }
    train_data = enc["train"]
    if not len(train_data):
        raise SpartaError(
            f"all {train_data.dropped} training examples are longer than {max_length} tokens; raise --max-length"
        )
    logger.info(
        f"data: train {objective.describe(train_data)} (dropped {train_data.dropped} > {max_length} tokens), "
        f"dev {objective.describe(enc['dev'])}, test {objective.describe(enc['test'])}; "
        f"{'instruct' if instruct else 'base'} model {cfg.model}"
    )
    if task.label_names:  # classification: the class list and counts
        logger.info(f"classes (training examples): {class_counts(task.label_names, train_data.labels)}")
    return splits, enc, max_length


@dataclass
class Setup:
    """Everything `train` builds before the method is applied."""

    device: torch.device
    dtype: torch.dtype
    precision: Precision
    targs: dict[str, Any]
    task: Any
    objective: Any
    method: Method
    resolved: Any
    model: nn.Module
    tokenizer: Any
    instruct: bool
    enc: dict[str, Any]
    max_length: int
    head_info: dict
    heads: Heads  # what trains besides the method's targets (`Objective.heads`)


def set_up(
    cfg: TrainConfig, rt: Runtime, chosen: tuple | None = None, precision: Precision | None = None
) -> Setup:
    """Seeds, device, task and objective (`chosen`: what `choose_task` returned), model and tokenizer, encoded
    data, the head's initial state, the heads to train; `precision`: what `choose_precision` returned."""
    seed_everything(cfg.seed)
    device, dtype = pick_device(cfg.device, cfg.dtype)
    device = rt.device(device)
    precision = precision or resolve_precision(cfg.precision, device)
    targs, task, objective = chosen or choose_task(cfg)
    method = get_method(cfg.method)
    resolved, model, tokenizer = load_model_and_tokenizer(
        cfg.model, objective, task.num_labels, dtype, cfg.padding_side, cfg.init_from
    )
    instruct = bool(getattr(resolved, "instruct", False))
    context = getattr(model.config, "max_position_embeddings", None)
    encoder = is_encoder(model.config)  # sentence pairs as pairs, truncated from the right
    splits, enc, max_length = encode_splits(cfg, objective, task, tokenizer, instruct, context, encoder)
    prompt = (  # what an instruct head's label words follow (objectives with a head only)
        format_input(task, splits["train"][0], tokenizer, instruct=True, template=cfg.template)
        if instruct and objective.head_modules
        else None
    )
    head_info = objective.init_head(
        model, tokenizer, task, instruct, prompt, getattr(resolved, "path", None), cfg.seed
    )
    heads = objective.heads(model, cfg)
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    model.to(device)
    return Setup(
        device,
        dtype,
        precision,
        targs,
        task,
        objective,
        method,
        resolved,
        model,
        tokenizer,
        instruct,
        enc,
        max_length,
        head_info,
        heads,
    )


def enable_gradient_checkpointing(model: nn.Module, reentrant: bool = False) -> None:
    """Checkpoint every block of a transformers model: its activations are recomputed in backward.

    `sparta train --gradient-checkpointing` uses PyTorch's non-reentrant checkpoint (`reentrant=False`), which
    PyTorch recommends: it records the graph inside a block whatever requires grad outside it. The re-entrant
    variant records nothing through a block none of whose inputs requires grad, so with frozen embeddings
    SpaRTA's deltas (or LoRA's weights) inside the blocks would silently get no gradient; the embeddings' output
    is therefore made to require grad (`enable_input_require_grads`), with either variant, before any wrapping.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise SpartaError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.disable_input_require_grads()  # (exactly one hook, whether or not transformers added its own)
    model.enable_input_require_grads()


def apply_method(cfg: TrainConfig, s: Setup, rt: Runtime) -> nn.Module:
    """The method's trainable model (SpaRTA switches to its functional merge where the engine shards)."""
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(s.model)
    net = s.method.apply(s.model, cfg, s.objective, s.heads)
    if hasattr(net, "set_merge_mode"):
        net.set_merge_mode(rt.merge_mode)
    net.to(s.device)
    net.train()
    trainable, total = count_parameters(net)
    logger.info(
        f"method {cfg.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.4f}%)"
    )
    for line in s.method.describe(net, s.device):
        logger.info(line)
    return net


# -- run directory and resuming --------------------------------------------------------------------------------
def resolve_output(cfg: TrainConfig) -> str:
    """The run dir: --resume DIR, else --output, else runs/<task>-<method>-seed<seed>."""
    if isinstance(cfg.resume, str):
        if cfg.output and Path(cfg.output).resolve() != Path(cfg.resume).resolve():
            raise SpartaError(f"--resume {cfg.resume} and --output {cfg.output} differ; give one run dir")
        return cfg.resume
    return cfg.output or f"runs/{cfg.task}-{cfg.method}-seed{cfg.seed}"


def check_resumable(cfg: TrainConfig, saved: dict, where: Path) -> None:
    now, defaults = cfg.to_dict(), TrainConfig().to_dict()  # a setting newer than the checkpoint: its default
    defaults.update(IMPLIED_BY_OLDER_CHECKPOINTS)
    changed = [k for k in now if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k]]
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise SpartaError(f"cannot resume {where}: settings differ from the checkpoint's ({shown})")


def open_run(cfg: TrainConfig, rt: Runtime) -> tuple[Path, checkpoint.Checkpoint | None]:
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
    ckpt = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(output))
    check_resumable(cfg, ckpt.state["config"], ckpt.path)
    if len(ckpt.rng) != rt.world:
        raise SpartaError(f"{ckpt.path} was written by {len(ckpt.rng)} process(es); resume with as many")
    logger.info(f"resuming from {ckpt.path} (step {ckpt.step})")
    return output, ckpt
