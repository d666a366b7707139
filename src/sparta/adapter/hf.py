"""What lets a `SpartaModel` go through Hugging Face `Trainer` (and TRL's trainers, which derive from it) as is.

`Trainer` recognises PEFT models by type alone; any other model is saved as ``model.state_dict()`` into
``model.safetensors`` and reloaded with ``model.load_state_dict(state_dict, False)`` (checkpoints, resuming,
``load_best_model_at_end``). So the adapter *is* the state dict here:

* `state_dict()` holds the adapter only: every SpaRTA delta and the fully trained head, under their parameter
  names. A checkpoint is then the size of the adapter, and a causal LM with tied input/output embeddings saves
  (safetensors refuses tensors that share memory, and the full state dict of such a model holds two);
* `load_state_dict()` loads those tensors back into the model in place (the merged weights follow at the next
  forward) and never writes a frozen weight: a base-model tensor in the dict is reported as unexpected;
* gradient checkpointing (TRL turns it on by default) is delegated to the wrapped model, and the embeddings'
  output is made to require grad: with frozen embeddings nothing entering the first checkpointed block requires
  grad, the re-entrant variant then records no graph through the block and the deltas get no gradient;
* a forward patched onto the model as a bound method (TRL's fused LM head: ``model.forward =
  MethodType(f, model)``, where ``f`` reads ``self.base_model`` as the transformers backbone) runs with the wrapped
  transformers model as ``self``, where those attributes mean what ``f`` expects.

The adapter files proper (`adapter_config.json` + `adapter_model.safetensors`, index formats, fingerprint) are
written by `SpartaModel.save_pretrained`; a Trainer checkpoint is for resuming and for `load_state_dict`.
"""

from __future__ import annotations

import types
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.modules.module import _IncompatibleKeys

from sparta.errors import SpartaError

_PATCHED = "_sparta_patched_forward"
_IN_PATCHED = "_sparta_in_patched_forward"


class TrainerCompat:
    """Mixin of `SpartaModel` (an `nn.Module` with `base_model`, `delta_parameters` and `head_parameters`)."""

    # -- the adapter as the state dict ---------------------------------------------------------------------------
    def adapter_state_names(self) -> list[str]:
        """Parameter names (in this model) of the deltas and the head, in model order: the state dict's keys."""
        wanted = {id(p) for p in (*self.delta_parameters().values(), *self.head_parameters().values())}
        return [n for n, p in self.named_parameters() if id(p) in wanted]

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False):
        """The adapter only: the deltas and the head (the base model's weights are the base model's).

        `merge_and_unload().state_dict()` is the full adapted model."""
        if args:  # torch's deprecated positional form: (destination, prefix, keep_vars)
            destination, prefix, keep_vars = [*args, *[None, prefix, keep_vars][len(args) :]][:3]
        out = OrderedDict() if destination is None else destination
        params = dict(self.named_parameters())
        for name in self.adapter_state_names():
            out[prefix + name] = params[name] if keep_vars else params[name].detach()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Copy the adapter tensors of `state_dict` (the keys of `state_dict()`) into the model, in place.

        Base-model tensors are never written (reported as unexpected keys). `strict`: every adapter tensor must be
        given and nothing else; `assign=True` is refused (the optimizer holds the delta Parameters)."""
        if assign:
            raise SpartaError("SpartaModel.load_state_dict copies in place; assign=True is not supported")
        names = self.adapter_state_names()
        known = set(names)
        missing = [n for n in names if n not in state_dict]
        unexpected = [k for k in state_dict if k not in known]
        if strict and (missing or unexpected):
            shown = (missing or unexpected)[:3]
            raise SpartaError(
                f"not a SpaRTA adapter state of this model: {len(missing)} adapter tensor(s) missing, "
                f"{len(unexpected)} unexpected key(s) (e.g. {shown}); pass strict=False to load the rest"
            )
        params = dict(self.named_parameters())
        for name in names:
            if name not in state_dict:
                continue
            value = torch.as_tensor(state_dict[name])
            if tuple(value.shape) != tuple(params[name].shape):
                raise SpartaError(
                    f"{name!r} has shape {tuple(value.shape)} in the state dict but {tuple(params[name].shape)} "
                    "in the model: not this adapter's state"
                )
            with torch.no_grad():
                params[name].copy_(value)  # bumps the version counter: the merged weights re-sync lazily
        return _IncompatibleKeys(missing, unexpected)

    # -- gradient checkpointing ------------------------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any):
        """Checkpoint the wrapped model's blocks (``{"use_reentrant": True/False}`` as in transformers) and make
        the embeddings' output require grad, so the deltas get their gradient with either variant."""
        base = self.base_model
        enable = getattr(base, "activation_checkpointing_enable", None)
        enable = enable or getattr(base, "gradient_checkpointing_enable", None)
        if enable is None:
            raise SpartaError(f"{type(base).__name__} has no gradient checkpointing to enable")
        enable(gradient_checkpointing_kwargs, **kwargs)
        if hasattr(base, "enable_input_require_grads"):
            # transformers keeps one list of these hooks per model: clear it first, so no hook is left unremovable
            base.disable_input_require_grads()
            base.enable_input_require_grads()

    def gradient_checkpointing_disable(self) -> None:
        base = self.base_model
        disable = getattr(base, "activation_checkpointing_disable", None)
        disable = disable or getattr(base, "gradient_checkpointing_disable", None)
        if disable is not None:
            disable()
        if hasattr(base, "disable_input_require_grads"):
            base.disable_input_require_grads()

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, **kwargs: Any
    ) -> None:
        """transformers' newer name of `gradient_checkpointing_enable` (what `Trainer` calls)."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_disable()

    # -- forwards patched in by libraries ----------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "forward" and isinstance(value, types.MethodType) and value.__self__ is self:
            # e.g. TRL's fused LM head; `_call_base` runs it on the wrapped model (see the module docstring)
            self.__dict__[_PATCHED] = value.__func__
            return
        super().__setattr__(name, value)

    def _call_base(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model, through a patched-in forward if there is one.

        The patched function may call the forward it replaced (ours): that call goes to the wrapped model."""
        patched = self.__dict__.get(_PATCHED)
        if patched is None or self.__dict__.get(_IN_PATCHED):
            return self.base_model(*args, **kwargs)
        self.__dict__[_IN_PATCHED] = True
        try:
            return patched(self.base_model, *args, **kwargs)
        finally:
            self.__dict__[_IN_PATCHED] = False
