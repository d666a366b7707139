"""SpartaConfig: what to adapt, how densely, and from which seed; and the one list of each format name.

The names a user can give for a dtype, an index encoding or a merge mode are defined here once; every other
module (file io, the training options, the CLI) takes its choices from these.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sparta.errors import SpartaError

ALL_LINEAR = "all-linear"
MERGE_MODES = ("inplace", "functional")
# dtype names sparta accepts (model weights, adapter deltas on disk), and the torch dtype of each
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_NAMES = tuple(DTYPES)
# how phi is encoded in an adapter file (see sparta.adapter.io)
INDEX_FORMATS = ("seed", "coo16", "flat32")
# default fully trained heads: the classification layer and, in encoders (BERT), the pooler that feeds it
HEAD_MODULES = ("score", "classifier", "pooler")


@dataclass
class SpartaConfig:
    """Configuration of a SpaRTA adapter (PEFT-style: a plain dataclass with help metadata)."""

    density: float = field(
        default=0.005,
        metadata={"help": "Probability that each scalar of a targeted weight is trainable, in (0, 1]."},
    )
    target_modules: str | list[str] = field(
        default=ALL_LINEAR,
        metadata={
            "help": "'all-linear' (every Linear weight inside the transformer blocks; embeddings and heads excluded), "
            "a list of module-name suffixes such as ['v_proj', 'o_proj'] (which may hold 'all-linear': "
            "['all-linear', 'lm_head'] adds an untied LM head), or a regex matched against full module names."
        },
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the index sampler (with parameter name and shape)."}
    )
    density_overrides: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "Per-target densities: {suffix or regex: density}; the first match wins."},
    )
    include_biases: bool = field(
        default=False,
        metadata={"help": "Also adapt the biases of targeted Linear modules (sparsely, same density)."},
    )
    include_norms: bool = field(
        default=False,
        metadata={
            "help": "Also adapt the weights of normalisation layers inside the blocks (sparsely, same density)."
        },
    )
    head_modules: list[str] = field(
        default_factory=lambda: list(HEAD_MODULES),
        metadata={"help": "Module names of the task head(s), kept fully trainable; empty to freeze heads."},
    )
    delta_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the trainable deltas during training (float32 recommended)."},
    )
    merge_mode: str = field(
        default="inplace",
        metadata={
            "help": "'inplace': the deltas are merged into the frozen weights' storage (fastest; single process, "
            "DDP, ZeRO-1/2). 'functional': the weights stay the pretrained values and each forward merges into a "
            "temporary copy (FSDP, ZeRO-3: engines that shard parameters). Same numbers either way."
        },
    )

    def __post_init__(self) -> None:
        self.density = check_density(self.density, "density")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if isinstance(self.target_modules, list):
            if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
                raise SpartaError(f"target_modules must be non-empty names, got {self.target_modules!r}")
        elif not isinstance(self.target_modules, str) or not self.target_modules:
            raise SpartaError(
                f"target_modules must be 'all-linear', a list of suffixes or a regex, got {self.target_modules!r}"
            )
        elif self.target_modules != ALL_LINEAR:
            _compile(self.target_modules)
        self.density_overrides = {
            k: check_density(v, f"density_overrides[{k!r}]") for k, v in self.density_overrides.items()
        }
        self.head_modules = list(self.head_modules)
        if self.delta_dtype not in DTYPES:
            raise SpartaError(f"delta_dtype must be one of {', '.join(DTYPES)}, got {self.delta_dtype!r}")
        check_merge_mode(self.merge_mode)

    def density_for(self, module_name: str) -> float:
        """The density of one targeted module: the first matching override, else the global density."""
        for pattern, density in self.density_overrides.items():
            if _matches(pattern, module_name):
                return density
        return self.density

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpartaConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpartaError(f"unknown SpartaConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def check_density(value: Any, what: str = "density") -> float:
    try:
        density = float(value)
    except (TypeError, ValueError):
        raise SpartaError(f"{what} must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < density <= 1.0:
        raise SpartaError(f"{what} must be in (0, 1] (e.g. 0.005 for 0.5%), got {value!r}")
    return density


def check_merge_mode(mode: Any) -> str:
    """`mode` if it is a known merge mode, else a SpartaError that names the choices."""
    if mode not in MERGE_MODES:
        raise SpartaError(f"merge_mode must be one of {', '.join(MERGE_MODES)}, got {mode!r}")
    return mode


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise SpartaError(f"target_modules {pattern!r} is not a valid regex: {err}") from None


def _matches(pattern: str, module_name: str) -> bool:
    """A suffix match on dotted name components, or else a full regex match."""
    if module_name == pattern or module_name.endswith("." + pattern):
        return True
    return _compile(pattern).fullmatch(module_name) is not None
