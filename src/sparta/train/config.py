"""The run configuration: one dataclass, `TrainConfig`, whose fields declare every option once (help, group,
choices, flag).

The fields every run has, whatever its method and objective, are `SharedConfig`'s, here; each method and
objective declares its own in its module (`Method.options`, `Objective.options`: SpaRTA's density, LoRA's rank,
DPO's beta, GRPO's group size, ...), and `TrainConfig` is composed of all of them (`sparta.options.compose`), so
a new plug-in adds its options without a change here and `cfg.beta` reads the same as `cfg.seed`. The
`sparta train` / `sparta tune-density` flags and the accepted YAML keys are generated from the fields (see
`sparta.options`), and flags and YAML values go through the same conversion. Precedence, lowest first: the
dataclass defaults, the YAML file (`--config run.yaml`), explicit CLI flags (their defaults are
`argparse.SUPPRESS`, so only the flags a user actually typed override the YAML). `lr: None` is resolved per
method, objective and density by `sparta.train.rates` when the run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from sparta import methods, options
from sparta.adapter.config import DTYPE_NAMES
from sparta.errors import SpartaError
from sparta.methods import METHOD_NAMES, get_method
from sparta.methods.base import targets_of
from sparta.objectives import OBJECTIVE_NAMES, OBJECTIVES, get_objective
from sparta.options import option
from sparta.precision import normalise as normalise_precision
from sparta.tasks.rows import FORMATS

METHODS = METHOD_NAMES  # the registry in sparta.methods
SCHEDULERS = ("linear", "cosine", "constant")
PADDING_SIDES = ("left", "right")
# CLI argument groups, in the order `--help` lists them
GROUPS = {
    "run": "run",
    "task": "custom task (--task custom) and task overrides",
    "data": "data",
    "method": "method",
    "optim": "optimisation",
    "rl": "reinforcement learning (--objective grpo, --task arithmetic)",
    "runtime": "runtime",
}


# the plug-ins' options dataclasses, methods first, each in registry order (Dora shares Lora's)
PLUGIN_OPTIONS = tuple(
    dict.fromkeys(p.options for p in (*methods.METHODS.values(), *OBJECTIVES.values()) if p.options)
)


@dataclass
class SharedConfig:
    """The options of every run, whatever its method and objective, and what a config does (validation, YAML,
    flags); `TrainConfig` adds the plug-ins' options to them."""

    option_parts: ClassVar[tuple[type, ...]] = ()  # the plug-ins' options dataclasses (`options.compose`)

    task: str = option("sst2", group="run", help="task name (sst2, cola, mrpc, rte, qnli, imdb, mmlu, ...)")
    method: str = option("sparta", group="run", choices=METHODS, help="adaptation method")
    objective: str | None = option(
        None,
        group="run",
        choices=OBJECTIVE_NAMES,
        help="what training optimises (default: the task's; language-modelling for gsm8k and SFT tasks)",
    )
    model: str = option(
        "smollm2-135m-instruct",
        group="run",
        help="registry alias, Hugging Face hub id or local model directory",
    )
    output: str | None = option(
        None, metavar="DIR", group="run", help="output directory (results.json, log.csv, tb/, adapter)"
    )
    data_dir: str | None = option(
        None, metavar="DIR", group="run", help="folder holding <task>/<split>.jsonl.gz"
    )
    seed: int = option(0, group="run", help="seed for torch, python, numpy, data order and SpaRTA indices")
    # custom tasks (--task custom) and task overrides
    train_file: str | None = option(
        None, metavar="FILE", group="task", help="training examples (.jsonl/.json/.csv/.tsv, optionally .gz)"
    )
    dev_file: str | None = option(
        None, metavar="FILE", group="task", help="dev examples (10% of train, at most 1000, if unset)"
    )
    test_file: str | None = option(None, metavar="FILE", group="task", help="test examples")
    text_fields: list[str] | None = option(
        None, group="task", help="comma-separated input fields (custom default: text)"
    )
    label_field: str | None = option(None, group="task", help="label field (custom default: label)")
    label_words: list[str] | None = option(
        None, group="task", help="comma-separated answer word per label, used to initialise instruct heads"
    )
    instruction: str | None = option(None, group="task", help="the task instruction given to instruct models")
    labels: list[str] | None = option(
        None,
        group="task",
        help="comma-separated class names in id order (custom tasks: the label values, or names of ids 0..)",
    )
    allow_rare_labels: bool = option(
        False,
        group="task",
        const=True,
        help="custom tasks: train even with a class of under 3 (or 0.5%) training rows or an eval label absent "
        "from train",
    )
    # the columns of SFT and preference rows (a custom task's objective is told from them unless --objective)
    format: str | None = option(
        None,
        group="task",
        choices=FORMATS,
        help="SFT rows: chat messages, a prompt and a completion, or plain text (default: told from the columns)",
    )
    messages_field: str | None = option(
        None,
        group="task",
        help="SFT: the column of chat turns, a list of {role, content} (default: messages)",
    )
    prompt_field: str | None = option(
        None, group="task", help="SFT and preference: the prompt column (default: prompt)"
    )
    completion_field: str | None = option(
        None, group="task", help="SFT: the column of the reply to the prompt (default: completion)"
    )
    text_field: str | None = option(
        None,
        group="task",
        help="SFT on plain text (with --objective language-modelling or --format text): the text column "
        "(default: text; classification inputs are --text-fields)",
    )
    chosen_field: str | None = option(
        None, group="task", help="preference: the column of the preferred reply (default: chosen)"
    )
    rejected_field: str | None = option(
        None, group="task", help="preference: the column of the dispreferred reply (default: rejected)"
    )
    keep_calculator: bool = option(
        False, group="task", const=True, help="gsm8k: keep the <<...>> calculator annotations in the answers"
    )
    difficulty: int | None = option(
        None,
        group="task",
        help="arithmetic: operations per problem, 1..8 (default 2; sparta.tasks.arithmetic)",
    )
    # data
    max_train_samples: int | None = option(None, group="data", help="cap on training examples")
    max_eval_samples: int | None = option(None, group="data", help="cap on dev and test examples")
    max_length: int | None = option(
        None, group="data", help="drop training examples longer than this many tokens (task default if unset)"
    )
    template: str | None = option(
        None,
        group="data",
        help="str.format template over the example's fields and {instruction}; replaces the input text",
    )
    padding_side: str = option(
        "right", group="data", choices=PADDING_SIDES, help="pad on the left or the right"
    )
    # optimisation
    epochs: float = option(1.0, group="optim", help="training epochs (fractions allowed)")
    max_steps: int | None = option(None, group="optim", help="optimizer steps; wins over --epochs")
    batch_size: int = option(16, group="optim", help="examples per micro-batch")
    eval_batch_size: int | None = option(
        None, group="optim", help="examples per evaluation batch (2 x batch size if unset)"
    )
    grad_accum: int = option(1, group="optim", help="micro-batches per optimizer step")
    lr: float | None = option(
        None,
        group="optim",
        help="AdamW learning rate (default: the measured or conventional rate for the method, objective and "
        "density; see sparta.train.rates, listed in the README)",
    )
    weight_decay: float = option(0.0, group="optim", help="AdamW weight decay")
    scheduler: str = option(
        "linear", group="optim", choices=SCHEDULERS, help="learning-rate schedule after warmup"
    )
    warmup_ratio: float = option(
        0.1,
        group="optim",
        help="fraction of steps used for linear warmup (0.1: the warmup every measured default rate used)",
    )
    warmup_steps: int | None = option(None, group="optim", help="warmup steps; wins over --warmup-ratio")
    max_grad_norm: float | None = option(1.0, group="optim", help="gradient clipping norm ('none' disables)")
    dropout: float | None = option(
        None, group="optim", help="set the model's attention/hidden dropout (unset: the model's own)"
    )
    eval_every: int | None = option(
        None, group="optim", help="evaluate on dev every N optimizer steps (once per epoch if unset)"
    )
    init_from: str | None = option(
        None,
        metavar="RUN",
        group="run",
        help="start from this SFT run's model (its adapter merged into the base weights), which is then also "
        "the reference of preference optimisation; a fresh adapter trains on top",
    )
    early_stopping_patience: int | None = option(
        None, group="optim", help="stop after N dev evaluations without a lower dev loss"
    )
    restore_best: bool = option(
        True, group="optim", help="end with the state of lowest dev loss (true/false)"
    )
    log_every: int = option(10, group="optim", help="optimizer steps between train-loss log rows")
    # runtime
    dtype: str | None = option(
        None,
        group="runtime",
        choices=DTYPE_NAMES,
        help="the weights' dtype (float32 if unset; mixed precision keeps fp32 weights and computes in bf16)",
    )
    precision: str | None = option(
        None,
        group="runtime",
        aliases=("--mixed-precision",),
        metavar="{fp32,bf16-mixed,fp16-mixed}",
        help="compute precision: fp32, or fp32 weights, optimizer state and loss with bf16/fp16 autocast "
        "compute (accelerate's no/bf16/fp16 accepted); default: accelerate's launch setting, else bf16-mixed "
        "on a GPU with bf16 and on a CPU with AVX512-BF16/AMX, fp32 elsewhere",
    )
    device: str | None = option(
        None, group="runtime", help="cpu, cuda, cuda:1, ... (cuda when available if unset)"
    )
    zero_shot: bool = option(
        True, group="runtime", flag="--no-zero-shot", const=False, help="skip the evaluation before training"
    )
    progress: bool = option(
        True, group="runtime", flag="--no-progress", const=False, help="hide the progress bar"
    )
    gradient_checkpointing: bool = option(
        False,
        group="runtime",
        const=True,
        help="recompute each block's activations in backward instead of keeping them (less memory, ~1/3 more "
        "compute; PyTorch's non-reentrant checkpoint)",
    )
    overwrite: bool = option(
        False, group="run", const=True, help="replace an output directory holding a finished run"
    )
    # checkpoints and resuming
    save_every: int | None = option(
        None, group="run", help="write OUTPUT/checkpoint-STEP/ every N optimizer steps"
    )
    keep_checkpoints: int = option(2, group="run", help="how many of the newest checkpoints to keep")
    resume: bool | str | None = option(
        None,
        group="run",
        const=True,
        optional_value=True,
        metavar="DIR",
        help="continue the run in DIR (default: --output) from its newest checkpoint; same settings required",
    )
    extra: dict[str, Any] = option(
        group="run",
        default_factory=dict,
        cli=False,
        help="free-form notes carried into results.json (YAML only)",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, options.convert_field(type(self), f.name, getattr(self, f.name), f.name))
        self.validate()

    def validate(self) -> None:
        """Raise SpartaError on settings that cannot work (choices come from the fields' metadata, the values
        of every plug-in's options from its `validate`, whichever method and objective run)."""
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise SpartaError(f"unknown {f.name} {value!r}; choose one of {', '.join(choices)}")
        self.precision = normalise_precision(self.precision)
        checks = [
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (
                self.max_steps is None or self.max_steps >= 1,
                f"max_steps must be >= 1, got {self.max_steps} (leave it unset to train for --epochs)",
            ),
            (self.epochs > 0 or self.max_steps is not None, "give epochs > 0 or max_steps > 0"),
            (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.dropout is None or 0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.eval_every is None or self.eval_every >= 1, "eval_every must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.save_every is None or self.save_every >= 1, "save_every must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SpartaError(message)
        for part in self.option_parts:
            if hasattr(part, "validate"):
                options.select(part, self).validate()
        method = get_method(self.method)
        if self.objective is not None:
            method.check(self, get_objective(self.objective))
        else:  # the task names the objective later; what a setting asks of the method is checked now
            for objective in OBJECTIVES.values():
                if objective.sparse_heads(self):
                    method.check(self, objective)

    @property
    def target_modules(self) -> list[str]:
        return targets_of(self, get_method(self.method))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A validated config from a mapping of settings (dashes in keys read as underscores)."""
        aliases = options.alias_keys(cls)
        keys = {k: str(k).replace("-", "_") for k in values}
        values = {aliases.get(keys[k], keys[k]): v for k, v in values.items()}
        if values.get("precision") is False:  # YAML reads accelerate's `mixed_precision: no` as false
            values["precision"] = "no"
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpartaError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**options.coerce(cls, values, f"{source}: {{}}"))

    def to_yaml(self) -> str:
        """Every setting as YAML that `load_yaml` + `from_dict` read back to an equal config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def to_argv(self) -> list[str]:
        """The `sparta train` flags that rebuild this config (task, method and seed always; others if changed)."""
        return options.to_argv(self, always=("task", "method", "seed"))


TrainConfig = options.compose(
    "TrainConfig",
    SharedConfig,
    PLUGIN_OPTIONS,
    module=__name__,
    doc="Everything a training run depends on (the shared options and every plug-in's); `results.json` stores "
    "it in full.",
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of TrainConfig fields (dashes in keys are accepted as underscores)."""
    path = Path(path)
    if not path.is_file():
        where = str(path.absolute())
        if not path.is_absolute():
            where += f" (a relative path is read from the current directory, {os.getcwd()})"
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise SpartaError(f"config file {path} {what}: looked for {where}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SpartaError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpartaError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one flag per TrainConfig field (SUPPRESSed defaults: YAML values survive)."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    groups["run"].add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="YAML",
        help="YAML file of settings; explicit flags win",
    )
    options.add_arguments(groups, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults < YAML (`args.config`) < explicit flags into a validated TrainConfig."""
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path:
        values.update(load_yaml(config_path))
    by_name = {f.name: f for f in fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in by_name}
    values.update(options.coerce(TrainConfig, flags, lambda name: options.flag_of(by_name[name])))
    return TrainConfig.from_dict(values, source=str(config_path or "arguments"))
