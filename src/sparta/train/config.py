"""The run configuration: one dataclass whose fields declare every option once (help, group, choices, flag).

The `sparta train` / `sparta tune-density` flags and the accepted YAML keys are generated from the fields (see
`sparta.train.options`), and flags and YAML values go through the same conversion. Precedence, lowest first: the
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
from typing import Any

import yaml

from sparta.adapter.config import DTYPE_NAMES, INDEX_FORMATS, check_density
from sparta.errors import SpartaError
from sparta.methods import METHOD_NAMES, get_method
from sparta.methods.base import targets_of
from sparta.objectives import OBJECTIVE_NAMES, OBJECTIVES, get_objective
from sparta.objectives.grpo import GRPO_LOSSES
from sparta.objectives.language_modelling import LM_HEAD, LOSS_ON
from sparta.objectives.preference import DPO_LOSSES
from sparta.precision import normalise as normalise_precision
from sparta.tasks.rows import FORMATS
from sparta.train import options as O
from sparta.train.options import option

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


@dataclass
class TrainConfig:
    """Everything a training run depends on; `results.json` stores it in full."""

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
    loss_on: str = option(
        "assistant",
        group="data",
        choices=LOSS_ON,
        help="language modelling: the tokens that carry the loss (every assistant turn, or all tokens)",
    )
    # method settings
    density: float = option(
        0.005, group="method", help="SpaRTA: fraction of each targeted weight that is trainable"
    )
    targets: list[str] | None = option(
        None,
        group="method",
        help="comma-separated target modules (sparta: all-linear; lora/dora: q_proj,v_proj)",
    )
    index_seed: int | None = option(
        None,
        group="run",
        help="seed of the SpaRTA index sampling when it should differ from --seed (e.g. adapters meant for merging)",
    )
    lm_head: str = option(
        "frozen",
        group="method",
        choices=LM_HEAD,
        help="language modelling: the LM head stays frozen, trains fully (untied from the input embeddings "
        "first where tied; sparta, lora, dora, full) or is one more SpaRTA target (sparse; untied first)",
    )
    lora_r: int = option(8, group="method", help="LoRA/DoRA rank")
    lora_alpha: float = option(16.0, group="method", help="LoRA/DoRA alpha")
    lora_dropout: float = option(0.1, group="method", help="LoRA/DoRA dropout")
    save_index_format: str = option(
        "seed",
        group="method",
        choices=INDEX_FORMATS,
        help="SpaRTA adapter index encoding (seed: regenerated from the seed, no index bytes)",
    )
    save_delta_dtype: str = option(
        "float32", group="method", choices=DTYPE_NAMES, help="SpaRTA adapter delta/head precision on disk"
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
    warmup_ratio: float = option(0.0, group="optim", help="fraction of steps used for linear warmup")
    warmup_steps: int | None = option(None, group="optim", help="warmup steps; wins over --warmup-ratio")
    max_grad_norm: float | None = option(1.0, group="optim", help="gradient clipping norm ('none' disables)")
    dropout: float | None = option(
        None, group="optim", help="set the model's attention/hidden dropout (unset: the model's own)"
    )
    eval_every: int | None = option(
        None, group="optim", help="evaluate on dev every N optimizer steps (once per epoch if unset)"
    )
    eval_generate: bool | None = option(
        None,
        group="optim",
        help="language modelling: score greedy generations (exact match) in the zero-shot and final dev/test "
        "metrics (true/false; default: the task's, true for gsm8k); dev evaluations during training: loss only",
    )
    max_new_tokens: int = option(
        256, group="optim", help="language modelling: the most tokens generated per example when scoring"
    )
    beta: float = option(
        0.1, group="optim", help="preference (DPO): how far the policy may move from the reference (beta)"
    )
    dpo_loss: str = option(
        "sigmoid",
        group="optim",
        choices=DPO_LOSSES,
        help="preference: sigmoid (DPO; with --label-smoothing: conservative DPO) or ipo (on length-normalised "
        "log-probs)",
    )
    label_smoothing: float = option(
        0.0,
        group="optim",
        help="preference, sigmoid loss: the assumed share of flipped labels (cDPO), in [0, 0.5)",
    )
    precompute_reference: bool = option(
        False,
        group="optim",
        const=True,
        help="preference: compute the reference log-probs of every pair once before training and store them with "
        "the run (OUTPUT/reference_logps.safetensors; reused on resume)",
    )
    num_generations: int = option(
        8, group="rl", help="completions sampled per prompt (the group whose rewards give the advantages)"
    )
    num_iterations: int = option(
        1,
        group="rl",
        help="optimizer steps on each rollout batch (>1: PPO-style reuse with the clipped ratio)",
    )
    epsilon: float = option(0.2, group="rl", help="clipping range of the probability ratio")
    kl_coef: float = option(
        0.0,
        group="rl",
        help="weight of the per-token KL to the reference (the disabled adapter); 0: no KL term",
    )
    grpo_loss: str = option(
        "grpo",
        group="rl",
        choices=GRPO_LOSSES,
        help="grpo: advantages scaled by the group std, token-level mean; dr-grpo: no std, a constant divisor",
    )
    rewards: list[str] = option(
        group="rl",
        default_factory=lambda: ["exact"],
        help="comma-separated rewards NAME[=WEIGHT] or MODULE:FUNCTION[=WEIGHT] (built-ins: exact, format, "
        "length; sparta.objectives.rewards)",
    )
    temperature: float = option(
        0.7,
        group="rl",
        help="sampling temperature of the rollouts (0.7: SmolLM2-135M is rarely right at 1.0)",
    )
    top_p: float = option(1.0, group="rl", help="nucleus sampling of the rollouts (1: off)")
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
            setattr(self, f.name, O.convert_field(type(self), f.name, getattr(self, f.name), f.name))
        self.validate()

    def validate(self) -> None:
        """Raise SpartaError on settings that cannot work (choices come from the fields' metadata)."""
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise SpartaError(f"unknown {f.name} {value!r}; choose one of {', '.join(choices)}")
        check_density(self.density)
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
            (0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
            (self.lora_r >= 1, "lora_r must be >= 1"),
            (self.eval_every is None or self.eval_every >= 1, "eval_every must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.save_every is None or self.save_every >= 1, "save_every must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.beta > 0, f"beta must be > 0, got {self.beta}"),
            (self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}"),
            (self.epsilon > 0, f"epsilon must be > 0, got {self.epsilon}"),
            (self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (
                0 <= self.label_smoothing < 0.5,
                f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise SpartaError(message)
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
        aliases = O.alias_keys(cls)
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
        return cls(**O.coerce(cls, values, f"{source}: {{}}"))

    def to_yaml(self) -> str:
        """Every setting as YAML that `load_yaml` + `from_dict` read back to an equal config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def to_argv(self) -> list[str]:
        """The `sparta train` flags that rebuild this config (task, method and seed always; others if changed)."""
        return O.to_argv(self, always=("task", "method", "seed"))


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
    O.add_arguments(groups, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults < YAML (`args.config`) < explicit flags into a validated TrainConfig."""
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path:
        values.update(load_yaml(config_path))
    by_name = {f.name: f for f in fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in by_name}
    values.update(O.coerce(TrainConfig, flags, lambda name: O.flag_of(by_name[name])))
    return TrainConfig.from_dict(values, source=str(config_path or "arguments"))
