"""Base-model fingerprints: recognise the model an adapter was trained on, and name what differs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

from sparta.errors import SpartaError

_SAMPLES = 16


def sample_positions(numel: int) -> torch.Tensor:
    """The flat positions whose values a fingerprint hashes: `_SAMPLES` evenly strided ones (all, if fewer)."""
    k = min(_SAMPLES, numel)
    # exact integer strides (a float linspace can round past the end)
    return torch.arange(k) * (numel - 1) // max(k - 1, 1)


def hash_samples(values: torch.Tensor) -> str:
    """Hash of the sampled values, rounded to bfloat16 so fp32 and bf16 copies of one model agree."""
    values = values.detach().to(torch.bfloat16).float().cpu().numpy()
    return hashlib.sha256(values.tobytes()).hexdigest()[:12]


def _value_hash(param: torch.Tensor) -> str | None:
    if param.device.type == "meta" or param.numel() == 0:
        return None
    flat = param.detach().reshape(-1)
    return hash_samples(flat[sample_positions(flat.numel()).to(flat.device)])


def model_fingerprint(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, list]:
    """{parameter name: [shape, dtype, value hash]} for every parameter not under an excluded module prefix."""
    prefixes = tuple(f"{e}." for e in exclude)
    return {
        name: [list(p.shape), str(p.dtype).replace("torch.", ""), _value_hash(p)]
        for name, p in model.named_parameters()
        if not name.startswith(prefixes)
    }


def check_fingerprint(expected: dict[str, list], actual: dict[str, list], required: Iterable[str]) -> None:
    """Raise a SpartaError naming the mismatch if `actual` is not the base model `expected` describes.

    Parameters present in both must agree in shape and sampled values (dtype may differ: fp32 and bf16 copies
    of one model are the same base). Every `required` (adapted) parameter must be present.
    """
    missing = [name for name in required if name not in actual]
    if missing:
        raise SpartaError(
            f"the base model has no parameter {missing[0]!r} that the adapter adapts ({len(missing)} missing); "
            "load the adapter onto the model it was trained on"
        )
    common = [name for name in expected if name in actual]
    if not common:
        raise SpartaError(
            "the base model shares no parameter names with the adapter's base model: wrong architecture"
        )
    for name in common:
        exp_shape, _, exp_hash = expected[name]
        act_shape, _, act_hash = actual[name]
        if list(exp_shape) != list(act_shape):
            raise SpartaError(
                f"base model mismatch: {name!r} has shape {tuple(act_shape)} but the adapter was trained on "
                f"shape {tuple(exp_shape)}; load the adapter onto the model it was trained on"
            )
    bad = [n for n in common if expected[n][2] and actual[n][2] and expected[n][2] != actual[n][2]]
    if bad:
        raise SpartaError(
            f"base model mismatch: the weights of {bad[0]!r} (and {len(bad) - 1} other tensors) differ from those the "
            "adapter was trained on; load the adapter onto the exact model it was trained on"
        )
