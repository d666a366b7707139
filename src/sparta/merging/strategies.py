"""Rules for adding sparse deltas of several adapters into one model (the issue "Merging that keeps every task").

Every rule works on each adapted tensor's positions and values only (`{name: (shape, phi, values)}`, what
`sparta.adapter.io.read_sparse_deltas` returns), so merging costs O(total deltas), never a dense tensor per
adapter. `weights` scale each adapter's deltas first. The rules:

* ``sum`` (the paper's): ``W0 + sum_i w_i * scatter(phi_i, delta_i)``;
* ``mean``: each position divided by the number of adapters that select it, so overlapping deltas are averaged
  and disjoint ones kept whole (with independent index sets almost every position is disjoint: mean ~ sum);
* ``ties`` (Yadav et al., 2023): each adapter's delta is trimmed, per tensor, to the ``top_k`` share of its
  largest magnitudes; per position a sign is elected (the sign of the trimmed deltas' sum, i.e. the side with the
  larger total magnitude); the position gets the mean of the trimmed values that agree with it;
* ``dare`` (Yu et al., 2024): a share ``drop`` of each adapter's deltas is dropped at random (seeded, per
  adapter and tensor), the rest rescaled by ``1 / (1 - drop)``, then combined by ``sum`` or ``ties`` (``then``).

`merge_sparse` also reports, per adapter, the share of its (weighted) delta mass that survives: the L1 norm of
what it contributes to the merged deltas over the L1 norm of its own weighted deltas (for DARE, of what was kept,
before the rescaling).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sparta.errors import SpartaError

STRATEGIES = ("sum", "mean", "ties", "dare")
Sparse = dict[str, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Strategy:
    """A merge rule and its parameters (written into merged.json as given)."""

    name: str = "sum"
    top_k: float = 0.2  # ties: share of each adapter's largest-magnitude deltas kept, per tensor
    drop: float = 0.5  # dare: share of each adapter's deltas dropped at random
    then: str = "sum"  # dare: how the rescaled deltas combine, "sum" or "ties"
    seed: int = 0  # dare: the random drop's seed

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise SpartaError(f"unknown merge strategy {self.name!r}; choose one of {', '.join(STRATEGIES)}")
        if not 0 < self.top_k <= 1:
            raise SpartaError(f"--top-k must be in (0, 1], got {self.top_k}")
        if not 0 <= self.drop < 1:
            raise SpartaError(f"--drop must be in [0, 1), got {self.drop}")
        if self.then not in ("sum", "ties"):
            raise SpartaError(f"dare combines with sum or ties, not {self.then!r}")

    def describe(self) -> dict[str, Any]:
        """The parameters that matter for this rule."""
        keys = {"sum": (), "mean": (), "ties": ("top_k",), "dare": ("drop", "then", "seed")}[self.name]
        extra = ("top_k",) if self.name == "dare" and self.then == "ties" else ()
        return {"name": self.name, **{k: getattr(self, k) for k in (*keys, *extra)}}


def strategy_from_options(
    name: str = "sum",
    top_k: float | None = None,
    drop: float | None = None,
    then: str | None = None,
    seed: int | None = None,
) -> Strategy:
    """A `Strategy` from command-line options, refusing a parameter that the rule would ignore."""
    Strategy(name)  # an unknown rule is named as such first
    given = {"top_k": top_k, "drop": drop, "then": then, "seed": seed}
    flags = {"top_k": "--top-k", "drop": "--drop", "then": "--dare-then", "seed": "--dare-seed"}
    used = {"sum": (), "mean": (), "ties": ("top_k",), "dare": ("drop", "then", "seed", "top_k")}[name]
    for key, value in given.items():
        if value is not None and key not in used:
            raise SpartaError(f"{flags[key]} does not apply to --strategy {name}")
    if name == "dare" and top_k is not None and then != "ties":
        raise SpartaError("--top-k applies to dare only with --dare-then ties")
    return Strategy(name, **{k: v for k, v in given.items() if v is not None})


@dataclass
class Merged:
    """The merged deltas per tensor (positions and values) and each adapter's surviving mass."""

    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    survival: list[float] = field(default_factory=list)


def _drop_mask(n: int, drop: float, seed: int, adapter: int, name: str) -> torch.Tensor:
    """Which of an adapter's n deltas DARE keeps: seeded by (seed, adapter index, tensor name), like phi itself."""
    key = hashlib.sha256(f"{seed}/{adapter}/{name}".encode()).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(key[:8], "little")))
    return torch.from_numpy(rng.random(n) >= drop)


def _trim(values: torch.Tensor, top_k: float) -> torch.Tensor:
    """Zero all but the `top_k` share of the largest magnitudes (at least one value kept)."""
    k = max(1, int(round(top_k * values.numel())))
    if k >= values.numel():
        return values.clone()
    keep = values.abs().topk(k).indices
    out = torch.zeros_like(values)
    out[keep] = values[keep]
    return out


def _combine(union: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]], rule: str, top_k: float):
    """(merged values on `union`, per-part contributions): parts are (positions into union, values)."""
    n = union.numel()
    if rule in ("sum", "mean"):
        total = torch.zeros(n, dtype=torch.float64)
        count = torch.zeros(n, dtype=torch.float64)
        for pos, vals in parts:
            total.index_add_(0, pos, vals.double())
            count.index_add_(0, pos, torch.ones_like(vals, dtype=torch.float64))
        divisor = count.clamp(min=1) if rule == "mean" else torch.ones(n, dtype=torch.float64)
        contributions = [vals.double() / divisor[pos] for pos, vals in parts]
        return total / divisor, contributions
    trimmed = [(pos, _trim(vals.double(), top_k)) for pos, vals in parts]
    total = torch.zeros(n, dtype=torch.float64)
    for pos, vals in trimmed:
        total.index_add_(0, pos, vals)
    sign = torch.sign(total)  # elected sign: the side with the larger summed magnitude
    agree_sum = torch.zeros(n, dtype=torch.float64)
    agree_n = torch.zeros(n, dtype=torch.float64)
    for pos, vals in trimmed:
        ok = (torch.sign(vals) == sign[pos]) & (vals != 0)
        agree_sum.index_add_(0, pos, torch.where(ok, vals, torch.zeros_like(vals)))
        agree_n.index_add_(0, pos, ok.double())
    divisor = agree_n.clamp(min=1)
    contributions = [
        torch.where((torch.sign(vals) == sign[pos]) & (vals != 0), vals, torch.zeros_like(vals))
        / divisor[pos]
        for pos, vals in trimmed
    ]
    return agree_sum / divisor, contributions


def merge_sparse(sparse: list[Sparse], weights: list[float], strategy: Strategy) -> Merged:
    """Merge adapters' sparse deltas by `strategy` (see the module docstring)."""
    if len(weights) != len(sparse):
        raise SpartaError(f"{len(weights)} weights for {len(sparse)} adapters")
    out = Merged()
    kept = [0.0] * len(sparse)
    mass = [0.0] * len(sparse)
    names = sorted({name for sp in sparse for name in sp})
    for name in names:
        members = [(i, sp[name]) for i, sp in enumerate(sparse) if name in sp]
        union = torch.unique(torch.cat([flat for _, (_, flat, _) in members]))
        parts = []
        for i, (_, flat, values) in members:
            vals = weights[i] * values.double()
            mass[i] += float(vals.abs().sum())
            if strategy.name == "dare":
                mask = _drop_mask(vals.numel(), strategy.drop, strategy.seed, i, name)
                vals = torch.where(mask, vals / (1 - strategy.drop), torch.zeros_like(vals))
            parts.append((torch.searchsorted(union, flat), vals))
        rule = strategy.then if strategy.name == "dare" else strategy.name
        merged, contributions = _combine(union, parts, rule, strategy.top_k)
        # DARE's rescaling is not surviving mass: count what was kept at its own size
        share = (1 - strategy.drop) if strategy.name == "dare" else 1.0
        for (i, _), contribution in zip(members, contributions, strict=True):
            kept[i] += share * float(contribution.abs().sum())
        out.deltas[name] = (union, merged.float())
    out.survival = [k / m if m else 1.0 for k, m in zip(kept, mass, strict=True)]
    return out
