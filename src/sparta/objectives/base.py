"""What every objective shares: the hooks the training loop and the methods call with the same meaning for all
kinds of task. `Objective` declares the ones each objective must give (`encode`, `units`, `batch_loss`,
`evaluate`, `metrics`, `metric_names`, `init_head`) as abstract methods, so an objective lacking one cannot be
made, and gives the rest the defaults of an objective that has nothing special to say.

An objective is asked instead of tested by name: which run settings apply to it (`check`), whether it has a head
(`has_head`) and asks for sparsely adapted heads (`sparse_heads`), its default learning rates (`rates`), which modules train
fully or sparsely besides the method's targets (`heads`), the extra arguments of its `encode` and `evaluate`
(`encode_options`, `eval_options`), what run.json records of its settings (`run_settings`), and how the progress
bar counts work (`work`, `work_unit`) and the log describes a split (`describe`), what to attach once the
method is applied (`prepare`) and what results.json adds about the data (`data_report`). Its own options
are a dataclass of `sparta.options.option` fields (`options`), declared in its module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Rate:
    """A default learning rate, where it comes from, and (SpaRTA) the lowest density it applies to."""

    lr: float
    source: str
    min_density: float = 0.0


@dataclass
class Heads:
    """The modules a method trains besides its targets: `full` train fully (a classification head, an LM head
    with lm_head="train"), `sparse` are extra SpaRTA targets (the LM head with lm_head="sparse"); `untied`: the
    output embeddings were given their own weight first (they were tied to the input embeddings)."""

    full: list[str] = field(default_factory=list)
    sparse: list[str] = field(default_factory=list)
    untied: bool = False


class Objective(ABC):
    """The hooks of an objective: the abstract ones each subclass gives, the others with their defaults; a
    subclass also sets `name`, `model_kind` and `peft_task_type` (tests/test_plugins.py checks every one)."""

    name = ""  # its key in `sparta.objectives.OBJECTIVES`, the --objective value and run.json's "objective"
    model_kind = ""  # what `sparta.models.load_model` builds: "classification" or "causal-lm"
    peft_task_type = ""  # PEFT's task type for LoRA/DoRA: "SEQ_CLS" or "CAUSAL_LM"
    head_modules: tuple[str, ...] = ()  # trained fully by every method that has a head
    work_unit = "ex"  # what `work` counts, for the progress bar's rate ("ex_s")
    uses_reference = False  # whether evaluating needs the method's reference model (`prepare_evaluation`)
    # the training recipe (`sparta.train.recipes.RECIPES`): "steps" (the loop over fixed examples) or "rollouts"
    # (reinforcement learning on the model's own samples, `sparta.train.grpo`)
    recipe = "steps"
    # default learning rates per method name, each method's highest min_density first (`sparta.train.rates`,
    # which documents the measurements behind them); a method missing here has no default (--lr is needed)
    rates: dict[str, tuple[Rate, ...]] = {}
    # the dataclass of its own options (`sparta.options.option` fields; `validate()` checks their values), which
    # `sparta.train.config.TrainConfig` gathers: their flags, YAML keys and results.json "config" keys
    options: type | None = None

    @staticmethod
    @abstractmethod
    def encode(examples: Any, task: Any, tokenizer: Any, instruct: bool, **options: Any) -> Any:
        """A split's examples encoded (`template`, `max_length`, `truncate`, `encoder` and the objective's
        `encode_options`): an object with `__len__` and `lengths` that `batch_loss` and `evaluate` read."""

    @staticmethod
    @abstractmethod
    def units(data: Any, idx: list[int]) -> int:
        """What the loss of the examples `idx` is averaged over (examples, target tokens, pairs)."""

    @staticmethod
    @abstractmethod
    def batch_loss(
        model: nn.Module, data: Any, idx: list[int], pad_id: int, padding_side: str, device: Any
    ) -> Any:
        """The summed loss of the examples `idx` (a 0-dim float32 tensor with a graph), divided by `units` later."""

    @staticmethod
    @abstractmethod
    def evaluate(
        model: nn.Module,
        data: Any,
        task: Any,
        batch_size: int,
        pad_id: int,
        padding_side: str,
        device: Any,
        rt: Any = None,
        **options: Any,
    ) -> dict[str, float]:
        """The metrics of one split ("loss" among them), with the objective's `eval_options`. Given
        ``records=[]`` (a keyword), also fills it with one score dict per example in split order, on every
        process (`sparta.objectives.examples`)."""

    @staticmethod
    @abstractmethod
    def metrics(*args: Any, **kwargs: Any) -> dict[str, float]:
        """The metrics from what `evaluate` gathered (the same dict `evaluate` returns)."""

    @staticmethod
    @abstractmethod
    def metric_names(task: Any) -> list[str]:
        """The metrics the run log shows for `task` besides the loss."""

    @staticmethod
    @abstractmethod
    def init_head(
        model: nn.Module, tokenizer: Any, task: Any, instruct: bool, prompt: str | None, path: Any, seed: int
    ) -> dict:
        """Initialise the model's head for `task` (or do nothing); returns results.json's "head_init"."""

    def check(self, cfg: Any) -> None:
        """Raise a SpartaError for run settings that cannot apply to this objective."""
        return None

    @property
    def has_head(self) -> bool:
        """Whether the task has a head of its own that every method trains (a classification head)."""
        return bool(self.head_modules)

    def sparse_heads(self, cfg: Any) -> str | None:
        """The setting that asks for modules adapted sparsely besides the method's targets (`Heads.sparse`), as
        its flag ("--lm-head sparse"), which only a method that `adapts_sparse_heads` trains; None: none."""
        return None

    def heads(self, model: nn.Module, cfg: Any) -> Heads:
        """The modules to train besides the method's targets (may prepare the model, e.g. untie a head)."""
        return Heads(full=list(self.head_modules))

    def encode_options(self, cfg: Any) -> dict[str, Any]:
        """Keyword arguments of `encode` that come from the run settings."""
        return {}

    def eval_options(self, cfg: Any, task: Any, tokenizer: Any, final: bool) -> dict[str, Any]:
        """Keyword arguments of `evaluate` from the run settings; `final`: the zero-shot and final metrics (as
        opposed to the dev evaluations during training). Equal dicts: the final dev metrics are the last ones."""
        return {}

    def run_settings(self, cfg: Any, heads: Heads) -> dict[str, Any]:
        """Settings of this objective that run.json records (to rebuild the model)."""
        return {}

    def saved_encode_options(self, info: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of `encode` for a saved run, from its run.json (what `run_settings` recorded)."""
        return {}

    def prepare_evaluation(self, model: nn.Module, method: Any, data: Any) -> None:
        """Attach what evaluating a saved run's model on `data` needs (preference: its reference, the
        `method`'s); `method` is None for a model that is no run (an export, a base model)."""
        return None

    def prepare(self, net: nn.Module, method: Any, cfg: Any, enc: dict[str, Any], **runtime: Any) -> None:
        """Called once by the loop after the method is applied, before the optimizer is built (`runtime`:
        output, device, pad_id, rt); preference optimisation attaches its reference here."""
        return None

    def data_report(self, enc: dict[str, Any], task: Any, cfg: Any) -> dict[str, Any]:
        """What results.json's "data" records besides the split sizes (e.g. pairs dropped per split)."""
        return {}

    @staticmethod
    def work(data: Any, idx: list[int]) -> int:
        """How much work the examples `idx` are, in `work_unit`s."""
        return len(idx)

    @staticmethod
    def describe(data: Any) -> str:
        """One split's size for the run log."""
        return f"{len(data)}"
