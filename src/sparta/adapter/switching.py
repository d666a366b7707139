"""Several SpaRTA adapters on one base model, switched in place (PEFT's names: `load_adapter`, `set_adapter`,
`delete_adapter`, `active_adapter`).

One adapter is live in the SpaRTA layers at a time; the others are kept as their positions phi, deltas and head
tensors (a few MB each). Switching is a scatter per adapted tensor: the pretrained values go back at the old
positions from the saved originals (never by subtracting, so nothing drifts however often one switches), the
new positions' pretrained values are read, and W0 + delta is written there. That is O(m) in the adapters' sizes,
with no model reload, and inference between switches costs what the base model costs (the deltas are merged).

Adapters switch in place when they adapt Linear weights (not biases or norms) of the same base model (checked
with its fingerprint when loaded) and have heads of the same shapes; targets one adapter has and another lacks
are wrapped once and hold no positions while the other is active.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sparta.adapter import io
from sparta.adapter.config import SpartaConfig
from sparta.adapter.layer import SpartaLinear
from sparta.adapter.targets import AdaptedParam, Conv1D, find_targets
from sparta.errors import SpartaError

DEFAULT_ADAPTER = "default"


@dataclass
class StoredAdapter:
    """An adapter that is not live: its config, targets, positions, deltas and head tensors (on the CPU)."""

    config: SpartaConfig
    targets: list[AdaptedParam]
    indices: dict[str, torch.Tensor]
    deltas: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]


class AdapterSwitching:
    """Mixin of `SpartaModel`: many loaded adapters, one active (see the module docstring)."""

    @property
    def active_adapter(self) -> str:
        return self.__dict__.get("_active_adapter", DEFAULT_ADAPTER)

    @property
    def adapter_names(self) -> list[str]:
        return [self.active_adapter, *self._stored_adapters()]

    def _stored_adapters(self) -> dict[str, StoredAdapter]:
        return self.__dict__.setdefault("_stored", {})

    def load_adapter(self, path: str | Path, adapter_name: str) -> None:
        """Read the adapter saved in `path` as `adapter_name`, checked against this base model; the active
        adapter stays active (`set_adapter` switches)."""
        if adapter_name in self.adapter_names:
            raise SpartaError(f"an adapter named {adapter_name!r} is loaded already; delete_adapter it first")
        self._check_switchable(self.targets, "the active adapter")
        with self.disable_adapter():  # the fingerprint and the targets are the base model's, W0 at every phi
            saved = io.read_adapter_for(self.base_model, Path(path))
        targets = find_targets(self.base_model, saved.config)
        self._check_switchable(targets, str(path))
        live_heads = self.head_parameters()
        for name, value in saved.heads.items():
            if name not in live_heads or live_heads[name].shape != value.shape:
                raise SpartaError(
                    f"{path}: head {name!r} {tuple(value.shape)} does not fit this model's head; adapters switch "
                    "in place only with heads of the same shape (use a merged multi-head model instead)"
                )
        self._wrap_missing(targets)
        self._stored_adapters()[adapter_name] = StoredAdapter(
            saved.config, targets, saved.indices, {n: v.float() for n, v in saved.deltas.items()}, saved.heads
        )

    def set_adapter(self, adapter_name: str) -> None:
        """Make `adapter_name` the live adapter, in place (O(m) scatters, no reload)."""
        if adapter_name == self.active_adapter:
            return
        stored = self._stored_adapters()
        if adapter_name not in stored:
            raise SpartaError(f"no adapter named {adapter_name!r}; loaded: {', '.join(self.adapter_names)}")
        incoming = stored.pop(adapter_name)
        stored[self.active_adapter] = self._snapshot()
        layers = dict(self.sparta_layers())
        by_module = {t.module_name: t for t in incoming.targets}
        with torch.no_grad():
            for module_name, layer in layers.items():
                target = by_module.get(module_name)
                if target is None:  # not adapted by the incoming adapter: W0 there
                    layer.set_positions(torch.empty(0, dtype=torch.int64), torch.empty(0))
                else:
                    layer.set_positions(incoming.indices[target.name], incoming.deltas[target.name])
            for name, p in self.head_parameters().items():
                p.copy_(incoming.heads.get(name, self._head_original[name]).to(p.dtype))
        self.targets, self.sparta_config = list(incoming.targets), incoming.config
        self.__dict__["_active_adapter"] = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        """Forget an inactive adapter."""
        if adapter_name == self.active_adapter:
            raise SpartaError(f"{adapter_name!r} is the active adapter; set_adapter another one first")
        if self._stored_adapters().pop(adapter_name, None) is None:
            raise SpartaError(f"no adapter named {adapter_name!r}; loaded: {', '.join(self.adapter_names)}")

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _snapshot(self) -> StoredAdapter:
        deltas = {n: d.detach().float().cpu().clone() for n, d in self.delta_parameters().items()}
        indices = {n: f.detach().cpu().clone() for n, f in self.delta_indices().items()}
        heads = {n: p.detach().cpu().clone() for n, p in self.head_parameters().items()}
        return StoredAdapter(self.sparta_config, list(self.targets), indices, deltas, heads)

    @staticmethod
    def _check_switchable(targets: list[AdaptedParam], what: str) -> None:
        vectors = [t.name for t in targets if t.kind != "matrix"]
        if vectors:
            raise SpartaError(
                f"{what} adapts biases or norms ({vectors[0]}, ...); adapters switch in place only on Linear weights"
            )

    def _wrap_missing(self, targets: list[AdaptedParam]) -> None:
        """Wrap targets no loaded adapter has wrapped yet, with no positions (W0) until theirs is active."""
        wrapped = {name for name, _ in self.sparta_layers()}
        for target in targets:
            if target.module_name in wrapped:
                continue
            module = self.base_model.get_submodule(target.module_name)
            layer = SpartaLinear(
                module,
                torch.empty(0, dtype=torch.int64),
                transposed=bool(Conv1D) and isinstance(module, Conv1D),
                delta_dtype=next(iter(self.delta_parameters().values())).dtype,
                merge_mode=self.sparta_config.merge_mode,
            )
            parent, _, child = target.module_name.rpartition(".")
            setattr(self.base_model.get_submodule(parent) if parent else self.base_model, child, layer)
