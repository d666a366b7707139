"""What every objective shares: the hooks the training loop and the methods call with the same meaning for all
kinds of task, with the defaults of an objective that has nothing special to say.

An objective is asked instead of tested by name: which run settings apply to it (`check`), which modules train
fully or sparsely besides the method's targets (`heads`), the extra arguments of its `encode` and `evaluate`
(`encode_options`, `eval_options`), what run.json records of its settings (`run_settings`), and how the progress
bar counts work (`work`, `work_unit`) and the log describes a split (`describe`), what to attach once the
method is applied (`prepare`) and what results.json adds about the data (`data_report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class Heads:
    """The modules a method trains besides its targets: `full` train fully (a classification head, an LM head
    with lm_head="train"), `sparse` are extra SpaRTA targets (the LM head with lm_head="sparse"); `untied`: the
    output embeddings were given their own weight first (they were tied to the input embeddings)."""

    full: list[str] = field(default_factory=list)
    sparse: list[str] = field(default_factory=list)
    untied: bool = False


class Objective:
    """The defaults of the hooks; subclasses set the attributes and override what differs."""

    name = ""
    model_kind = ""  # what `sparta.models.load_model` builds
    peft_task_type = ""
    head_modules: tuple[str, ...] = ()  # trained fully by every method that has a head
    work_unit = "ex"  # what `work` counts, for the progress bar's rate ("ex_s")
    uses_reference = False  # whether evaluating needs the method's reference model (`prepare_evaluation`)
    # the training recipe (`sparta.train.recipes.RECIPES`): "steps" (the loop over fixed examples) or "rollouts"
    # (reinforcement learning on the model's own samples, `sparta.train.grpo`)
    recipe = "steps"

    def check(self, cfg: Any) -> None:
        """Raise a SpartaError for run settings that cannot apply to this objective."""

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

    def prepare(self, net: nn.Module, method: Any, cfg: Any, enc: dict[str, Any], **runtime: Any) -> None:
        """Called once by the loop after the method is applied, before the optimizer is built (`runtime`:
        output, device, pad_id, rt); preference optimisation attaches its reference here."""

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
