"""Numeric precision of a run: fp32, or mixed precision with fp32 weights and bf16/fp16 compute.

Mixed precision keeps every parameter, the optimizer state, the SpaRTA deltas and the loss in float32 and runs
the forward's matrix products in bfloat16 (or float16) under `torch.autocast`: the same scheme as HF Trainer's
``bf16=True``, accelerate's ``--mixed_precision bf16`` and Lightning's ``"bf16-mixed"``. On a CPU with bf16 dot
products (AVX512-BF16, AMX) a bf16 matmul runs 2.4-3.3x faster than fp32 at SmolLM2's shapes; on GPUs it is the
standard. fp16-mixed needs a gradient scaler (`grad_scaler`): fp16's range underflows small gradients.

What autocast does to a SpaRTA layer: the forward multiplies by ``bf16(W0 + delta)``, so a delta below half a
bf16 step of its weight (2^-9 relative) does not change that forward yet, while its gradient still accumulates
into the float32 delta; this is what every fp32-master-weights scheme does to full fine-tuning, too. The merged
weights, `unload()` and the saved deltas stay float32 and exact.

The precision is chosen once per run (`resolve`): the one asked for, else accelerate's launch setting
(``ACCELERATE_MIXED_PRECISION``), else the device's best: bf16-mixed on a CUDA GPU with bf16 and on a CPU with
bf16 instructions, fp32 elsewhere. A device without bf16 falls back to fp32 with the reason recorded.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from sparta.errors import SpartaError

PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
# the spellings of accelerate (--mixed_precision no|bf16|fp16), Lightning and torch dtypes, read as ours
ALIASES = {
    "no": "fp32",
    "32": "fp32",
    "32-true": "fp32",
    "float32": "fp32",
    "bf16": "bf16-mixed",
    "bfloat16": "bf16-mixed",
    "fp16": "fp16-mixed",
    "16": "fp16-mixed",
    "16-mixed": "fp16-mixed",
    "float16": "fp16-mixed",
}
COMPUTE_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}
LAUNCH_VARIABLE = "ACCELERATE_MIXED_PRECISION"  # what `accelerate launch --mixed_precision X` sets
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def normalise(name: str | None) -> str | None:
    """The canonical name (fp32, bf16-mixed, fp16-mixed) of a precision or one of its aliases; None stays None."""
    if name is None:
        return None
    text = str(name).strip().lower()
    text = ALIASES.get(text, text)
    if text not in PRECISIONS:
        aliases = ", ".join(sorted(ALIASES))
        raise SpartaError(
            f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)} (also accepted: {aliases})"
        )
    return text


@functools.cache
def cpu_bf16_instructions() -> str | None:
    """The CPU's bf16 dot-product instruction set (avx512_bf16 or amx_bf16) from /proc/cpuinfo, else None."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return None
    flags = set()
    for line in info.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return next((f for f in reversed(_CPU_BF16_FLAGS) if f in flags), None)


def supports(precision: str, device: torch.device) -> str | None:
    """None if `device` computes `precision` natively, else why not."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(device)} has no bf16"
        return None
    if device.type == "cpu":
        if precision == "bf16-mixed" and cpu_bf16_instructions() is None:
            return "this CPU has no bf16 instructions (AVX512-BF16 or AMX)"
        return None
    return f"mixed precision on {device.type} is not supported by sparta yet"


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in and why (`reason`: for the log, run.json and results.json)."""

    name: str
    reason: str

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return COMPUTE_DTYPES.get(self.name)

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"


def resolve(requested: str | None, device: torch.device) -> Precision:
    """The precision to run in: `requested`, else accelerate's launch setting, else the device's default."""
    if requested is not None:
        name, source = normalise(requested), "asked for"
    elif os.environ.get(LAUNCH_VARIABLE):
        name, source = (
            normalise(os.environ[LAUNCH_VARIABLE]),
            f"{LAUNCH_VARIABLE}={os.environ[LAUNCH_VARIABLE]}",
        )
    else:
        name, source = default_for(device)
    missing = supports(name, device)
    if missing is not None:
        return Precision("fp32", f"{name} {source}, but {missing}: fell back to fp32")
    return Precision(name, source)


def default_for(device: torch.device) -> tuple[str, str]:
    """(precision, why): bf16-mixed where the device has fast bf16, else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16-mixed", "default on a GPU with bf16"
    if device.type == "cpu" and (found := cpu_bf16_instructions()) is not None:
        return "bf16-mixed", f"default on a CPU with {found}"
    return "fp32", f"default on {device.type} without fast bf16"


@contextlib.contextmanager
def autocast(precision: Precision | str | None, device: torch.device | str) -> Iterator[None]:
    """The forward's compute precision: torch.autocast for the mixed precisions, nothing for fp32/None."""
    name = precision.name if isinstance(precision, Precision) else normalise(precision)
    dtype = COMPUTE_DTYPES.get(name or "fp32")
    if dtype is None:
        yield
        return
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    with torch.autocast(device_type, dtype=dtype):
        yield


def grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16-mixed (fp16 gradients underflow without one), else None."""
    if precision.name != "fp16-mixed":
        return None
    return torch.amp.GradScaler(device.type)
