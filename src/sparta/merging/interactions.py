"""How merged adapters interact: per pair, the positions both select, what share of each that is, how many
would overlap by chance, and how many of the shared deltas disagree in sign; with warnings for pairs that
(almost) share their index sets, and for overlap rules (mean, TIES) that find (almost) nothing to act on."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparta.merging.sources import AdapterSource
from sparta.merging.strategies import Strategy


def interaction_stats(sparse: list[dict], names: list[str]) -> list[dict[str, Any]]:
    """Per pair of adapters: positions selected by both, their share, and sign conflicts among them."""
    pairs = []
    for i in range(len(sparse)):
        for j in range(i + 1, len(sparse)):
            a, b = sparse[i], sparse[j]
            overlap = conflicts = expected = 0.0
            for name in a.keys() & b.keys():
                (shape, ia, va), (_, ib, vb) = a[name], b[name]
                common, pa, pb = np.intersect1d(
                    ia.numpy(), ib.numpy(), assume_unique=True, return_indices=True
                )
                overlap += len(common)
                conflicts += int((va[pa].sign() * vb[pb].sign() < 0).sum())
                expected += len(ia) * len(ib) / max(1, int(np.prod(shape)))
            na, nb = sum(len(v[1]) for v in a.values()), sum(len(v[1]) for v in b.values())
            union = na + nb - overlap
            pairs.append(
                {
                    "a": names[i],
                    "b": names[j],
                    "count_a": na,
                    "count_b": nb,
                    "overlap": int(overlap),
                    "overlap_share_a": overlap / na if na else 0.0,
                    "overlap_share_b": overlap / nb if nb else 0.0,
                    "jaccard": overlap / union if union else 0.0,
                    "expected_overlap_if_independent": round(expected, 1),
                    "identical_indices": bool(na == nb == overlap),
                    "sign_conflicts": int(conflicts),
                    "sign_conflict_share": conflicts / overlap if overlap else 0.0,
                }
            )
    return pairs


def interaction_warnings(sources: list[AdapterSource], pairs: list[dict]) -> list[str]:
    out = []
    by_name = {s.name: s for s in sources}
    for p in pairs:
        a, b = by_name[p["a"]].document["config"], by_name[p["b"]].document["config"]
        if p["identical_indices"] or (a["seed"] == b["seed"] and a["density"] == b["density"]):
            out.append(
                f"{p['a']} and {p['b']} select the SAME positions (same seed {a['seed']} and density "
                f"{a['density']}): every delta lands on top of the other's; train them with different --seed"
            )
        elif p["overlap_share_a"] > 0.5 or p["overlap_share_b"] > 0.5:
            out.append(f"{p['a']} and {p['b']} share over half of their positions ({p['overlap']:,})")
    return out


def strategy_warnings(strategy: Strategy, pairs: list[dict]) -> list[str]:
    """A note when the chosen rule's overlap handling has (almost) nothing to act on: mean, and TIES's sign
    election and averaging, change only positions that several adapters select."""
    overlap_rule = strategy.name in ("mean", "ties") or (strategy.name == "dare" and strategy.then == "ties")
    if not overlap_rule or not pairs:
        return []
    share = max(max(p["overlap_share_a"], p["overlap_share_b"]) for p in pairs)
    if share >= 0.05:
        return []
    what = "mean" if strategy.name == "mean" else "TIES's sign election and averaging"
    rest = (
        "so this merge is almost the sum"
        if strategy.name == "mean"
        else "elsewhere it adds each adapter's deltas trimmed to its top_k share"
    )
    return [
        f"--strategy {strategy.name}: {what} act only where adapters share positions, and these share at most "
        f"{100 * share:.2f}% of theirs; {rest} (adapters trained with one --index-seed share every position)"
    ]
