import subprocess
import sys

import numpy as np
import pytest

from sparta.adapter.sampling import count_indices, indices_checksum, sample_indices


def test_indices_sorted_unique_in_range_and_reproducible():
    a = sample_indices(50_000, 0.01, 0, "layers.0.v_proj.weight", (250, 200))
    b = sample_indices(50_000, 0.01, 0, "layers.0.v_proj.weight", (250, 200))
    assert np.array_equal(a, b)
    assert a.dtype == np.int64
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 50_000


def test_indices_depend_on_seed_name_and_shape():
    base = sample_indices(10_000, 0.05, 0, "w", (100, 100))
    assert not np.array_equal(base, sample_indices(10_000, 0.05, 1, "w", (100, 100)))
    assert not np.array_equal(base, sample_indices(10_000, 0.05, 0, "w2", (100, 100)))
    assert not np.array_equal(base, sample_indices(10_000, 0.05, 0, "w", (50, 200)))


@pytest.mark.parametrize("density", [1e-3, 0.05, 0.5])
def test_count_is_binomial(density):
    n = 400_000
    counts = [len(sample_indices(n, density, s, "w", (n,))) for s in range(20)]
    mean, sd = n * density, np.sqrt(n * density * (1 - density))
    # each count within 5 sd, and the mean of 20 within 5 sd / sqrt(20)
    assert all(abs(c - mean) < 5 * sd for c in counts)
    assert abs(np.mean(counts) - mean) < 5 * sd / np.sqrt(20)


def test_positions_are_uniform():
    n, density = 100_000, 0.02
    idx = np.concatenate([sample_indices(n, density, s, "w", (n,)) for s in range(10)])
    hist, _ = np.histogram(idx, bins=20, range=(0, n))
    expected = len(idx) / 20
    chi2 = ((hist - expected) ** 2 / expected).sum()
    assert chi2 < 45.3  # chi-square 19 dof, p = 0.001


def test_density_one_selects_everything():
    assert np.array_equal(sample_indices(1000, 1.0, 3, "w", (1000,)), np.arange(1000))


def test_rejects_bad_density():
    with pytest.raises(ValueError):
        sample_indices(10, 0.0, 0, "w", (10,))


def test_count_streams_without_materialising():
    # 10^10 positions: a dense mask or random tensor would need tens of GB; the streaming count needs O(chunk).
    n = 10**10
    assert count_indices(n, 1e-6, 0, "huge", (100_000, 100_000)) == len(
        sample_indices(n, 1e-6, 0, "huge", (100_000, 100_000))
    )


def test_same_indices_in_a_fresh_process():
    here = indices_checksum(
        sample_indices(123_456, 0.003, 7, "model.layers.3.mlp.up_proj.weight", (456, 270))
    )
    code = (
        "from sparta.adapter.sampling import sample_indices, indices_checksum;"
        "print(indices_checksum(sample_indices(123456, 0.003, 7, 'model.layers.3.mlp.up_proj.weight', (456, 270))))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert here == there
