"""The merge rules on hand-made sparse deltas: sum, mean, TIES and DARE, and each adapter's surviving mass."""

from __future__ import annotations

import pytest
import torch

from sparta.errors import SpartaError
from sparta.merging.strategies import Strategy, merge_sparse


def sparse(positions, values, shape=(4, 5)):
    return {
        "w": (shape, torch.tensor(positions, dtype=torch.int64), torch.tensor(values, dtype=torch.float32))
    }


def dense(merged, n=20):
    out = torch.zeros(n)
    for flat, values in merged.deltas.values():
        out[flat] = values
    return out


A = sparse([0, 3, 7, 9], [1.0, -2.0, 0.5, 4.0])
B = sparse([3, 7, 12], [3.0, 0.25, -1.0])


def test_sum_is_the_weighted_scatter_add():
    merged = merge_sparse([A, B], [1.0, -2.0], Strategy("sum"))
    expected = torch.zeros(20)
    expected[[0, 3, 7, 9]] += torch.tensor([1.0, -2.0, 0.5, 4.0])
    expected[[3, 7, 12]] += -2.0 * torch.tensor([3.0, 0.25, -1.0])
    torch.testing.assert_close(dense(merged), expected)
    assert merged.survival == [1.0, 1.0]


def test_mean_averages_overlaps_and_keeps_disjoint_deltas_whole():
    merged = dense(merge_sparse([A, B], [1.0, 1.0], Strategy("mean")))
    assert merged[0] == 1.0 and merged[9] == 4.0 and merged[12] == -1.0  # one adapter each: whole
    assert merged[3] == pytest.approx((-2.0 + 3.0) / 2) and merged[7] == pytest.approx((0.5 + 0.25) / 2)
    same = merge_sparse([A, A], [1.0, 1.0], Strategy("mean"))
    assert same.survival == pytest.approx([0.5, 0.5])  # identical index sets: each keeps half its mass


def test_ties_trims_elects_a_sign_and_averages_the_agreeing_values():
    # top_k 1: nothing trimmed. Position 3: -2 vs 3 -> sign +, only 3 agrees. Position 7: both +, mean.
    merged = dense(merge_sparse([A, B], [1.0, 1.0], Strategy("ties", top_k=1.0)))
    assert merged[3] == pytest.approx(3.0) and merged[7] == pytest.approx(0.375) and merged[9] == 4.0
    # top_k 0.5: A keeps its two largest (4 at 9, -2 at 3), B its largest two of three rounded (3 at 3, -1 at 12)
    trimmed = merge_sparse([A, B], [1.0, 1.0], Strategy("ties", top_k=0.5))
    values = dense(trimmed)
    assert values[0] == 0 and values[7] == 0 and values[9] == 4.0 and values[3] == pytest.approx(3.0)
    a_mass, b_mass = 7.5, 4.25
    assert trimmed.survival == pytest.approx([4.0 / a_mass, 4.0 / b_mass])


def test_dare_drops_a_seeded_share_and_rescales_the_rest():
    n = 2000
    big = sparse(list(range(n)), [1.0] * n, shape=(n,))
    assert torch.equal(dense(merge_sparse([big], [1.0], Strategy("dare", drop=0.0)), n), torch.ones(n))
    merged = merge_sparse([big], [1.0], Strategy("dare", drop=0.3, seed=1))
    values = dense(merged, n)
    kept = values != 0
    assert 0.65 < kept.float().mean() < 0.75 and torch.allclose(
        values[kept], torch.full_like(values[kept], 1 / 0.7)
    )
    assert merged.survival[0] == pytest.approx(kept.float().mean().item())
    again = dense(merge_sparse([big], [1.0], Strategy("dare", drop=0.3, seed=1)), n)
    other = dense(merge_sparse([big], [1.0], Strategy("dare", drop=0.3, seed=2)), n)
    assert torch.equal(values, again) and not torch.equal(values, other)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "avg"}, "unknown merge strategy"),
        ({"top_k": 0}, "top-k"),
        ({"drop": 1.0}, "drop"),
        ({"name": "dare", "then": "mean"}, "sum or ties"),
    ],
)
def test_bad_parameters_are_clear_errors(kwargs, message):
    with pytest.raises(SpartaError, match=message):
        Strategy(**kwargs)
