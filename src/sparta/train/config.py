"""The run configuration: one dataclass, loadable from YAML, overridable from the command line.

Precedence, lowest first: the dataclass defaults, the YAML file (`--config run.yaml`), explicit CLI flags.
The CLI parser uses `argparse.SUPPRESS` defaults, so only the flags a user actually typed override the YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sparta.errors import SpartaError

METHODS = ("sparta", "lora", "dora", "head", "full")
SCHEDULERS = ("linear", "cosine", "constant")
DTYPES = ("float32", "bfloat16", "float16")
# Modules each method adapts when --targets is not given (LoRA follows the paper: query and value projections).
DEFAULT_TARGETS = {"sparta": ["all-linear"], "lora": ["q_proj", "v_proj"], "dora": ["q_proj", "v_proj"]}


@dataclass
class TrainConfig:
    """Everything a training run depends on; `results.json` stores it in full."""

    task: str = "sst2"
    method: str = "sparta"
    model: str = "smollm2-135m-instruct"
    output: str | None = None
    data_dir: str | None = None
    seed: int = 0
    # custom tasks (--task custom) and task overrides
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    text_fields: list[str] | None = None
    label_field: str | None = None
    label_words: list[str] | None = None
    instruction: str | None = None
    labels: list[str] | None = None  # class names in id order (custom tasks: the label values)
    allow_rare_labels: bool = False  # custom tasks: accept classes with very few training rows
    # data
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int | None = None  # None: the task's max length
    template: str | None = None
    padding_side: str = "right"
    # method settings
    density: float = 0.005
    targets: list[str] | None = None  # None: DEFAULT_TARGETS[method]
    index_seed: int | None = None  # SpaRTA index sampling seed; None: --seed (differ for adapters to merge)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    save_index_format: str = "seed"  # sparta adapter files: seed | coo16 | flat32
    save_delta_dtype: str = "float32"  # sparta adapter files: float32 | bfloat16 | float16
    # optimisation
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int | None = None  # None: 2 * batch_size
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None  # wins over warmup_ratio when set
    max_grad_norm: float | None = 1.0
    dropout: float | None = None  # None: keep the model's own dropout settings
    eval_every: int | None = None  # optimizer steps; None: once per epoch
    early_stopping_patience: int | None = None  # dev evaluations without improvement
    restore_best: bool = True  # end with the trainable state that had the lowest dev loss
    log_every: int = 10
    # runtime
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on GPU
    device: str | None = None  # None: cuda when available, else cpu
    zero_shot: bool = True
    progress: bool = True
    overwrite: bool = False
    # checkpoints and resuming
    save_every: int | None = None  # optimizer steps between checkpoints (OUTPUT/checkpoint-STEP/); None: none
    keep_checkpoints: int = 2  # newest checkpoints kept
    resume: bool | str | None = None  # True: resume OUTPUT; a path: resume that run dir
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into results.json

    def __post_init__(self) -> None:
        for name in ("targets", "text_fields", "label_words", "labels"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [t.strip() for t in value.split(",") if t.strip()])
        self.validate()

    def validate(self) -> None:
        """Raise SpartaError on settings that cannot work."""
        checks = [
            (self.method in METHODS, f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}"),
            (
                self.scheduler in SCHEDULERS,
                f"unknown scheduler {self.scheduler!r}; use {', '.join(SCHEDULERS)}",
            ),
            (
                self.dtype is None or self.dtype in DTYPES,
                f"unknown dtype {self.dtype!r}; use {', '.join(DTYPES)}",
            ),
            (self.padding_side in ("left", "right"), "padding_side must be 'left' or 'right'"),
            (0 < self.density <= 1, f"density must be in (0, 1], got {self.density}"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (self.epochs > 0 or (self.max_steps or 0) > 0, "give epochs > 0 or max_steps > 0"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.dropout is None or 0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
            (
                self.save_index_format in ("seed", "coo16", "flat32"),
                "save_index_format must be seed, coo16 or flat32",
            ),
            (self.save_delta_dtype in DTYPES, f"save_delta_dtype must be one of {', '.join(DTYPES)}"),
            (self.lora_r >= 1, "lora_r must be >= 1"),
            (self.eval_every is None or self.eval_every >= 1, "eval_every must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.save_every is None or self.save_every >= 1, "save_every must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SpartaError(message)

    @property
    def target_modules(self) -> list[str]:
        return list(self.targets) if self.targets else list(DEFAULT_TARGETS.get(self.method, []))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpartaError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**values)
        except TypeError as err:
            raise SpartaError(f"{source}: {err}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of TrainConfig fields (dashes in keys are accepted as underscores)."""
    path = Path(path)
    if not path.is_file():
        raise SpartaError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpartaError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpartaError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _optional(kind: type):
    """argparse type that maps 'none' to None, so a YAML value can be cleared from the command line."""

    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field; defaults are SUPPRESSed so YAML values survive unless overridden."""
    d = TrainConfig.__dataclass_fields__
    S = argparse.SUPPRESS

    def add(flag: str, help: str, **kw: Any) -> None:
        name = flag.lstrip("-").replace("-", "_")
        default = d[name].default if name in d else None
        shown = f" (default: {default})" if default not in (None, False) else ""
        group.add_argument(flag, default=S, help=help + shown, **kw)

    group = parser.add_argument_group("run")
    group.add_argument(
        "--config", default=S, metavar="YAML", help="YAML file of settings; explicit flags win"
    )
    add("--task", "task name (sst2, cola, mrpc, rte, qnli, imdb, mmlu, ...)")
    add("--method", "adaptation method", choices=METHODS)
    add("--model", "registry alias, Hugging Face hub id or local model directory")
    add("--output", "output directory (results.json, log.csv, tb/, adapter)")
    add("--data-dir", "folder holding <task>/<split>.jsonl.gz")
    add("--seed", "seed for torch, python, numpy, data order and SpaRTA indices", type=int)
    add(
        "--index-seed",
        "seed of the SpaRTA index sampling when it should differ from --seed (e.g. adapters meant for merging)",
        type=_optional(int),
    )
    add("--overwrite", "replace an output directory holding a finished run", action="store_const", const=True)
    add("--save-every", "write OUTPUT/checkpoint-STEP/ every N optimizer steps", type=_optional(int))
    add("--keep-checkpoints", "how many of the newest checkpoints to keep", type=int)
    group.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=S,
        metavar="DIR",
        help="continue the run in DIR (default: --output) from its newest checkpoint; same settings required",
    )

    group = parser.add_argument_group("custom task (--task custom) and task overrides")
    add("--train-file", "training examples (.jsonl/.json/.csv/.tsv, optionally .gz)")
    add("--dev-file", "dev examples (10%% of train, at most 1000, if unset)")
    add("--test-file", "test examples")
    add("--text-fields", "comma-separated input fields (custom default: text)")
    add("--label-field", "label field (custom default: label)")
    add("--label-words", "comma-separated answer word per label, used to initialise instruct heads")
    add("--instruction", "the task instruction given to instruct models")
    add(
        "--labels",
        "comma-separated class names in id order (custom tasks: the label values, or names of ids 0..)",
    )
    add(
        "--allow-rare-labels",
        "custom tasks: train even with a class of under 3 (or 0.5%%) training rows or an eval label absent from train",
        action="store_const",
        const=True,
    )

    group = parser.add_argument_group("data")
    add("--max-train-samples", "cap on training examples", type=_optional(int))
    add("--max-eval-samples", "cap on dev and test examples", type=_optional(int))
    add(
        "--max-length",
        "drop training examples longer than this many tokens (task default if unset)",
        type=_optional(int),
    )
    add(
        "--template",
        "str.format template over the example's fields and {instruction}; replaces the input text",
    )
    add("--padding-side", "pad on the left or the right", choices=("left", "right"))

    group = parser.add_argument_group("method")
    add("--density", "SpaRTA: fraction of each targeted weight that is trainable", type=float)
    add("--targets", "comma-separated target modules (sparta: all-linear; lora/dora: q_proj,v_proj)")
    add("--lora-r", "LoRA/DoRA rank", type=int)
    add("--lora-alpha", "LoRA/DoRA alpha", type=float)
    add("--lora-dropout", "LoRA/DoRA dropout", type=float)
    add(
        "--save-index-format",
        "SpaRTA adapter index encoding (seed: regenerated from the seed, no index bytes)",
        choices=("seed", "coo16", "flat32"),
    )
    add("--save-delta-dtype", "SpaRTA adapter delta/head precision on disk", choices=DTYPES)

    group = parser.add_argument_group("optimisation")
    add("--epochs", "training epochs (fractions allowed)", type=float)
    add("--max-steps", "optimizer steps; wins over --epochs", type=_optional(int))
    add("--batch-size", "examples per micro-batch", type=int)
    add("--eval-batch-size", "examples per evaluation batch (2 x batch size if unset)", type=_optional(int))
    add("--grad-accum", "micro-batches per optimizer step", type=int)
    add("--lr", "AdamW learning rate", type=float)
    add("--weight-decay", "AdamW weight decay", type=float)
    add("--scheduler", "learning-rate schedule after warmup", choices=SCHEDULERS)
    add("--warmup-ratio", "fraction of steps used for linear warmup", type=float)
    add("--warmup-steps", "warmup steps; wins over --warmup-ratio", type=_optional(int))
    add("--max-grad-norm", "gradient clipping norm ('none' disables)", type=_optional(float))
    add("--dropout", "set the model's attention/hidden dropout", type=_optional(float))
    add(
        "--eval-every",
        "evaluate on dev every N optimizer steps (once per epoch if unset)",
        type=_optional(int),
    )
    add(
        "--early-stopping-patience",
        "stop after N dev evaluations without a lower dev loss",
        type=_optional(int),
    )
    add("--restore-best", "end with the state of lowest dev loss (true/false)", type=_bool)
    add("--log-every", "optimizer steps between train-loss log rows", type=int)

    group = parser.add_argument_group("runtime")
    add("--dtype", "model dtype (float32 on CPU, bfloat16 on GPU if unset)", choices=DTYPES)
    add("--device", "cpu, cuda, cuda:1, ... (cuda when available if unset)")
    group.add_argument(
        "--no-zero-shot",
        dest="zero_shot",
        action="store_const",
        const=False,
        default=S,
        help="skip the evaluation before training",
    )
    group.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        default=S,
        help="hide the progress bar",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults < YAML (`args.config`) < explicit flags into a validated TrainConfig."""
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path:
        values.update(load_yaml(config_path))
    names = {f.name for f in fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig.from_dict(values, source=str(config_path or "arguments"))
