"""Wrapping a whole model: choose targets, sample phi, swap in SpaRTA layers, and undo it all."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from sparta.adapter import io
from sparta.adapter.config import DTYPES, SpartaConfig, check_merge_mode
from sparta.adapter.fingerprint import model_fingerprint
from sparta.adapter.hf import TrainerCompat
from sparta.adapter.layer import SparseVectorDelta, SpartaLinear
from sparta.adapter.sampling import count_indices, sample_indices
from sparta.adapter.switching import AdapterSwitching
from sparta.adapter.targets import AdaptedParam, Conv1D, find_targets, is_head
from sparta.errors import SpartaError


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class SpartaModel(AdapterSwitching, TrainerCompat, nn.Module):
    """A transformers (or any torch) model with SpaRTA adapters; `forward` is the base model's forward.

    `state_dict()` / `load_state_dict()` hold the adapter only (the deltas and the head), which is what makes HF
    `Trainer` checkpoints adapter-sized and resumable (`sparta.adapter.hf`)."""

    def __init__(
        self,
        model: nn.Module,
        config: SpartaConfig,
        *,
        indices: dict[str, np.ndarray | torch.Tensor] | None = None,
    ):
        super().__init__()
        self.base_model = model
        self.sparta_config = config
        # Expose the base model's forward signature (HF Trainer picks dataset columns from it).
        self.forward = functools.partial(SpartaModel.forward, self)
        with contextlib.suppress(TypeError, ValueError):
            self.forward.__signature__ = inspect.signature(model.forward)
        self.head_names = [n for n, _ in model.named_modules() if n and is_head(n, config.head_modules)]
        self.head_names = [
            n for n in self.head_names if not any(n.startswith(f"{h}.") for h in self.head_names)
        ]
        self.targets = find_targets(model, config)
        _check_not_shared(model, [t.name for t in self.targets], self.head_names)
        self.base_fingerprint = model_fingerprint(model, exclude=self.head_names)
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        delta_dtype = DTYPES[config.delta_dtype]
        for p in model.parameters():
            p.requires_grad_(False)
        for target in self.targets:
            module = model.get_submodule(target.module_name)
            param = getattr(module, target.attr)
            if indices is not None:
                flat = torch.as_tensor(indices[target.name], dtype=torch.int64)
            elif param.device.type == "meta":
                # sizing only: the count is exact, the positions are not materialised
                flat = torch.empty(
                    count_indices(param.numel(), target.density, config.seed, target.name, target.shape),
                    dtype=torch.int64,
                    device="meta",
                )
            else:
                flat = torch.from_numpy(
                    sample_indices(param.numel(), target.density, config.seed, target.name, target.shape)
                )
            if target.kind == "matrix":
                transposed = bool(Conv1D) and isinstance(module, Conv1D)
                _set_module(
                    model,
                    target.module_name,
                    SpartaLinear(
                        module,
                        flat,
                        transposed=transposed,
                        delta_dtype=delta_dtype,
                        merge_mode=config.merge_mode,
                    ),
                )
            else:
                parametrize.register_parametrization(
                    module, target.attr, SparseVectorDelta(param, flat, delta_dtype=delta_dtype), unsafe=True
                )
        self._head_original: dict[str, torch.Tensor] = {}
        for head in self.head_names:
            for pname, p in model.get_submodule(head).named_parameters():
                self._head_original[f"{head}.{pname}"] = p.detach().clone()
                p.requires_grad_(True)

    # -- access ----------------------------------------------------------------------------------------------------
    def forward(self, *args, labels=None, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # `labels` is named so that HF Trainer, which reads the label names off the class's forward, finds them
        if labels is not None:
            kwargs["labels"] = labels
        return self._call_base(*args, **kwargs)

    def __getattr__(self, name: str):  # noqa: ANN204
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def sparta_layers(self) -> Iterator[tuple[str, SpartaLinear]]:
        """Every SpaRTA layer, the active adapter's and those other loaded adapters wrapped (`load_adapter`)."""
        for name, module in self.base_model.named_modules():
            if isinstance(module, SpartaLinear):
                yield name, module

    def _holders(self) -> Iterator[tuple[AdaptedParam, SpartaLinear | SparseVectorDelta]]:
        """Each target with the module holding its `sparta_delta` and `sparta_flat`."""
        for target in self.targets:
            module = self.base_model.get_submodule(target.module_name)
            yield target, module if target.kind == "matrix" else module.parametrizations[target.attr][0]

    def _vector_deltas(self) -> Iterator[SparseVectorDelta]:
        return (holder for target, holder in self._holders() if target.kind == "vector")

    def delta_parameters(self) -> dict[str, nn.Parameter]:
        """{adapted parameter name: its delta}, in model order."""
        return {target.name: holder.sparta_delta for target, holder in self._holders()}

    def delta_indices(self) -> dict[str, torch.Tensor]:
        """{adapted parameter name: sorted flat int64 positions phi}."""
        return {target.name: holder.sparta_flat for target, holder in self._holders()}

    def head_parameters(self) -> dict[str, nn.Parameter]:
        return {name: self.base_model.get_parameter(name) for name in self._head_original}

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all): trainable are the deltas and the head; all counts the base model plus the deltas."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        base = sum(p.numel() for n, p in self.base_model.named_parameters() if "sparta_delta" not in n)
        deltas = sum(p.numel() for p in self.delta_parameters().values())
        return trainable, base + deltas

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    # -- weights ---------------------------------------------------------------------------------------------------
    def sync_weights(self) -> None:
        """Re-merge every delta now (forward does this lazily after each optimizer step); functional: nothing to do."""
        for _, layer in self.sparta_layers():
            layer.sync(force=True)

    def set_merge_mode(self, mode: str) -> None:
        """Switch every layer to "inplace" or "functional" merging (and the config with them).

        Switching writes the pretrained values back first, so the weights are bitwise W0 in functional mode.
        Switch before an engine that shards parameters (FSDP, ZeRO-3) wraps the model, never after."""
        check_merge_mode(mode)
        for _, layer in self.sparta_layers():
            layer.set_merge_mode(mode)
        self.sparta_config.merge_mode = mode

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model: pretrained weights at phi and the original head, restored on exit."""
        layers = [layer for _, layer in self.sparta_layers()]
        vectors = list(self._vector_deltas())
        heads = self.head_parameters()
        trained = {n: p.detach().clone() for n, p in heads.items()}
        try:
            for layer in layers:
                layer.set_disabled(True)
            for v in vectors:
                v.disabled = True
            with torch.no_grad():
                for n, p in heads.items():
                    p.copy_(self._head_original[n])
            yield
        finally:
            with torch.no_grad():
                for n, p in heads.items():
                    p.copy_(trained[n])
            for v in vectors:
                v.disabled = False
            for layer in layers:
                layer.set_disabled(False)

    def _detach_adapters(self, merge: bool) -> nn.Module:
        model = self.base_model
        for name, layer in list(self.sparta_layers()):
            if merge:
                layer.merge_weight()
            else:
                layer.write_original()
            _set_module(model, name, layer.restore())
        for target in self.targets:
            if target.kind == "vector":
                module = model.get_submodule(target.module_name)
                if parametrize.is_parametrized(module, target.attr):
                    parametrize.remove_parametrizations(module, target.attr, leave_parametrized=merge)
        if not merge:
            with torch.no_grad():
                for n, p in self.head_parameters().items():
                    p.copy_(self._head_original[n])
        for n, p in model.named_parameters():
            p.requires_grad_(self._requires_grad.get(n, False))
        return model

    def merge_and_unload(self) -> nn.Module:
        """The base model with the deltas merged into its weights and the trained head: a plain transformers model."""
        return self._detach_adapters(merge=True)

    def unload(self) -> nn.Module:
        """The base model with its exact pretrained weights (and original head) back."""
        return self._detach_adapters(merge=False)

    # -- files -----------------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | Path,
        index_format: str = "seed",
        delta_dtype: str = "float32",
        *,
        state_dict: dict | None = None,
        safe_serialization: bool = True,
        is_main_process: bool = True,
        **kwargs,  # noqa: ANN003 - other transformers save options (max_shard_size, push_to_hub, ...): no meaning here
    ) -> Path:
        """Write the adapter files (`adapter_config.json`, `adapter_model.safetensors`) into `save_directory`.

        Takes transformers' `save_pretrained` keywords: `is_main_process=False` writes nothing; the adapter is
        always safetensors, and always the model's own tensors (a `state_dict` is refused, not ignored)."""
        if state_dict is not None:
            raise SpartaError(
                "SpartaModel.save_pretrained writes the model's own deltas and head; it takes no state_dict "
                "(load it first with load_state_dict)"
            )
        if not safe_serialization:
            raise SpartaError(
                "SpaRTA adapters are always safetensors (never pickle); drop safe_serialization=False"
            )
        path = Path(save_directory)
        if is_main_process:
            io.save_adapter(self, path, index_format=index_format, delta_dtype=delta_dtype)
        return path

    @classmethod
    def from_pretrained(
        cls,
        base_model: nn.Module,
        path: str | Path,
        *,
        is_trainable: bool = False,
        adapter_name: str = "default",
    ) -> SpartaModel:
        """Wrap `base_model` with the adapter saved in `path`, after checking it is the adapter's base model.

        Everything is read and validated before the model is touched: a bad adapter leaves `base_model` as it was.
        """
        saved = io.read_adapter_for(base_model, Path(path))
        model = cls(base_model, saved.config, indices=saved.indices)
        with torch.no_grad():
            for name, delta in model.delta_parameters().items():
                delta.copy_(saved.deltas[name].to(delta.dtype))
                delta.requires_grad_(is_trainable)
            for name, p in model.head_parameters().items():
                if name in saved.heads:
                    p.copy_(saved.heads[name].to(p.dtype))
                p.requires_grad_(is_trainable)
        model.sync_weights()
        model.__dict__["_active_adapter"] = adapter_name
        return model


def _check_not_shared(model: nn.Module, targets: list[str], heads: list[str]) -> None:
    """A target or head weight shared with another module (a causal LM's LM head tied to its input embeddings)
    would carry its delta or training into that module too: refuse it before anything is changed."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    adapted = set(targets) | {f"{h}.{n}" for h in heads for n, _ in model.get_submodule(h).named_parameters()}
    for names in owners.values():
        if len(names) > 1 and adapted & set(names):
            raise SpartaError(
                f"SpaRTA cannot adapt {sorted(adapted & set(names))[0]}: it is one tensor with {', '.join(names)} "
                "(tied weights); give the module its own weight first (a tied LM head: a new Parameter copy of its "
                "weight, and tie_word_embeddings=False in the config; sparta train's --lm-head does this)"
            )


def get_sparta_model(model: nn.Module, config: SpartaConfig) -> SpartaModel:
    """Wrap `model` with SpaRTA adapters as `config` describes (the model is modified in place)."""
    if isinstance(model, SpartaModel):
        raise SpartaError(
            "the model already carries a SpaRTA adapter; call merge_and_unload() or unload() first"
        )
    return SpartaModel(model, config)
