"""LoRA and DoRA through PEFT (DoRA: `use_dora=True`): low-rank updates on the targets (the paper's baseline:
query and value projections), with the objective's head in `modules_to_save` so that it trains fully as well
(for language modelling: the LM head with --lm-head train, none by default); PEFT's task type is the
objective's (SEQ_CLS, CAUSAL_LM)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from sparta.errors import SpartaError
from sparta.methods.base import Method, TargetOptions, check_targets, heads_of, one_line, targets_of
from sparta.objectives.base import Heads
from sparta.options import option


@dataclass
class LoraOptions(TargetOptions):
    """LoRA's and DoRA's options: the rank, scale and dropout of the low-rank update."""

    lora_r: int = option(8, group="method", help="LoRA/DoRA rank")
    lora_alpha: float = option(16.0, group="method", help="LoRA/DoRA alpha")
    lora_dropout: float = option(0.1, group="method", help="LoRA/DoRA dropout")

    def validate(self) -> None:
        if not 0 <= self.lora_dropout < 1:
            raise SpartaError("lora_dropout must be in [0, 1)")
        if self.lora_r < 1:
            raise SpartaError("lora_r must be >= 1")


class Lora(Method):
    name = "lora"
    use_dora = False
    default_targets = ("q_proj", "v_proj")
    options = LoraOptions

    def apply(self, model: nn.Module, cfg: Any, objective: Any, heads: Heads | None = None) -> nn.Module:
        heads = heads_of(model, cfg, objective, heads)
        if heads.sparse:
            raise SpartaError(
                f"{self.name} cannot adapt {', '.join(heads.sparse)} sparsely (that is SpaRTA's)"
            )
        targets = targets_of(cfg, self)
        config = LoraConfig(
            task_type=objective.peft_task_type,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            use_dora=self.use_dora,
            modules_to_save=list(heads.full) or None,
        )
        check_targets(model, targets)
        try:
            return get_peft_model(model, config)
        except ValueError as err:
            raise SpartaError(f"cannot apply {self.name}: {err}") from None

    def save(self, model: nn.Module, directory: Path, cfg: Any) -> None:
        model.save_pretrained(str(directory))

    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        try:
            return PeftModel.from_pretrained(base, str(directory))
        except (
            Exception
        ) as err:  # PEFT/safetensors raise many types on missing, truncated or mismatched files
            raise SpartaError(
                f"cannot load the {self.name} adapter in {directory}: {one_line(err)}"
            ) from None

    @contextlib.contextmanager
    def reference(self, model: nn.Module) -> Iterator[nn.Module]:
        """PEFT's disabled adapter (the LoRA/DoRA updates and modules_to_save copies bypassed)."""
        with model.disable_adapter():
            yield model


class Dora(Lora):
    name = "dora"
    use_dora = True
