"""Adaptation methods as plug-ins: each of sparta, lora, dora, head and full is one small `Method` object in
`METHODS`, which the training loop and the run layer look up by name and then ask (apply, save, load, ...).
A new method is one module here and one line below."""

from __future__ import annotations

from sparta.errors import SpartaError
from sparta.methods.base import (
    Method,
    count_parameters,
    decay_groups,
    dir_bytes,
    load_trainable_state,
    set_dropout,
    trainable_state,
)
from sparta.methods.full import Full
from sparta.methods.head import Head
from sparta.methods.lora import Dora, Lora
from sparta.methods.sparta import Sparta

METHODS: dict[str, Method] = {m.name: m for m in (Sparta(), Lora(), Dora(), Head(), Full())}
METHOD_NAMES = tuple(METHODS)


def get_method(name: str) -> Method:
    """The method registered as `name`."""
    try:
        return METHODS[name]
    except KeyError:
        raise SpartaError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "Method",
    "count_parameters",
    "decay_groups",
    "dir_bytes",
    "get_method",
    "load_trainable_state",
    "set_dropout",
    "trainable_state",
]
