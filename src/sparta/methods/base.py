"""What every adaptation method shares: the `Method` interface the training loop and the run layer call, and
the parameter bookkeeping that is the same for all of them (counting, copying and restoring the trainable
tensors, AdamW groups, dropout).

A method object knows how to make a model trainable its way (`apply`), which of its files a run keeps (`save`,
`load`; these three are abstract: a method lacking one cannot be made), which objectives and settings it cannot
train (`check`), and whether a run of it holds a whole model (`saves_model`) rather than an adapter on a base model. It
takes the run's settings as one object with attributes (`sparta.train.config.TrainConfig`, or anything with the
same field names), so this layer does not depend on the training package. Its own options are a dataclass of
`sparta.options.option` fields (`options`), which `TrainConfig` gathers into its flags and YAML keys.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparta.adapter.targets import LINEAR_TYPES, check_target_names
from sparta.errors import SpartaError
from sparta.objectives.base import Heads
from sparta.options import option


@dataclass
class TargetOptions:
    """The option of every method that adapts chosen modules of the model (sparta, lora, dora)."""

    targets: list[str] | None = option(
        None,
        group="method",
        help="comma-separated target modules (sparta: all-linear; lora/dora: q_proj,v_proj)",
    )


class Method(ABC):
    """The interface of one adaptation method: `apply`, `save` and `load` each method gives, the other hooks
    have defaults (subclasses override what differs; tests/test_plugins.py runs every one)."""

    name: str = ""  # its key in `sparta.methods.METHODS`, the --method value and run.json's "method"
    saves_model = False  # a run holds a whole model (model/) instead of an adapter (adapter/) on its base
    default_targets: tuple[str, ...] = ()  # modules adapted when --targets is not given
    trains_head_only = (
        False  # trains the objective's head and nothing else: refused for objectives without one
    )
    adapts_sparse_heads = False  # trains the sparse heads an objective's settings ask for (`Heads.sparse`)
    uses_density = False  # its size is --density: the default rate and the reports depend on it
    # its adapter/ is a SpaRTA adapter: sparse deltas on a shared base, which merge and switch in place (serve)
    sparse_adapter = False
    # the dataclass of its own options (`sparta.options.option` fields; `validate()` checks their values), which
    # `sparta.train.config.TrainConfig` gathers: their flags, YAML keys and results.json "config" keys
    options: type | None = None

    def check(self, cfg: Any, objective: Any) -> None:
        """Raise a SpartaError where this method cannot train `objective` with the run settings `cfg`."""
        flag = objective.sparse_heads(cfg)
        if flag and not self.adapts_sparse_heads:
            option = flag.split()[0]
            raise SpartaError(
                f"{flag} adapts the module with SpaRTA's sparse deltas, which --method {self.name} does not "
                f"train: use --method sparta, or another {option}"
            )
        if self.trains_head_only and not objective.has_head:
            raise SpartaError(
                f"the {self.name} method trains a classification head, which the {objective.name} objective does "
                "not have: use --method sparta, lora, dora or full"
            )

    @abstractmethod
    def apply(self, model: nn.Module, cfg: Any, objective: Any, heads: Heads | None = None) -> nn.Module:
        """Make `model` (its head already initialised) trainable as this method does; returns the model to train.

        `heads`: what trains besides the targets (`objective.heads(model, cfg)` when not given, see `heads_of`)."""

    @abstractmethod
    def save(self, model: nn.Module, directory: Path, cfg: Any) -> None:
        """Write what the method trained into the (new, empty) `directory`."""

    @abstractmethod
    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        """Attach what `save` wrote in `directory` to a freshly loaded base model."""

    def describe(self, model: nn.Module, device: torch.device) -> list[str]:
        """Extra lines for the run log (e.g. which kernel computes the gradients)."""
        return []

    def weight_sync(self, model: nn.Module) -> Any:
        """What sends this method's updates to a separate generator (`sparta.adapter.sync`): by default every
        trainable tensor that changed, whole."""
        from sparta.adapter.sync import TrainableSync

        return TrainableSync(model)

    def keep_reference(self, model: nn.Module, reference: nn.Module | None = None) -> None:
        """Keep what `reference` needs of the model as it is now, before training (full: a frozen copy); a
        trained model whose reference is another model (a saved full fine-tuning run) is given it."""
        return None

    @contextlib.contextmanager
    def reference(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model to run as the reference of preference optimisation: the model before training (for
        adapters: the same model with its adapter disabled, no copy of any weight). Only forwards under no_grad
        may run inside, and never between a training forward and its backward."""
        raise SpartaError(f"the {self.name} method has no reference model for preference optimisation")
        yield model  # (unreachable: makes this a generator)


def heads_of(model: nn.Module, cfg: Any, objective: Any, heads: Heads | None) -> Heads:
    """The modules trained besides a method's targets: `heads`, else what the objective says for this run."""
    return heads if heads is not None else objective.heads(model, cfg)


def targets_of(cfg: Any, method: Method) -> list[str]:
    """The modules to adapt: the run's --targets, else the method's default."""
    return list(cfg.targets) if cfg.targets else list(method.default_targets)


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """PEFT's own error does not say what exists: name the Linear modules when a target matches none."""
    if targets == ["all-linear"]:
        return
    check_target_names(targets, [n for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)])


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability in the model (nn.Dropout modules and attention_dropout attributes).

    Call before wrapping with PEFT so LoRA's own dropout keeps its setting. Returns how many places were set.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            count += 1
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            count += 1
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in (
        "attention_dropout",
        "hidden_dropout",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "dropout",
    ):
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, p)
    return count


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; adapters report their own (total = base model + adapter)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable tensors only (what early stopping keeps in memory)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: no weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith(".bias") or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def one_line(err: Exception) -> str:
    """An exception as one short line, for errors from libraries that raise many types."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def dir_bytes(path: Path) -> int:
    """Total size of a file or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
