"""Reproducible Bernoulli index sampling in O(m) time and memory.

Each position of a tensor with n elements is selected independently with probability p (the density), so
the selected count m is Binomial(n, p) with mean p*n. Instead of drawing n coin flips (O(n) memory, a dense
mask), we draw the gaps between successive selected positions, which are i.i.d. Geometric(p): this produces
exactly the same distribution with O(m) work and never touches a buffer the size of the weight.

The generator, documented so that any implementation can reproduce the indices bit for bit:

* seed material: SHA-256 of the UTF-8 string ``f"sparta-v1|{seed}|{name}|{'x'.join(shape)}"``; its first 16
  bytes, as a little-endian integer, seed NumPy's ``SeedSequence`` which seeds a ``PCG64`` bit generator;
* uniforms: each raw 64-bit output ``r`` gives ``u = ((r >> 11) + 1) * 2**-53`` in (0, 1];
* gaps: ``g = floor(log(u) / log1p(-p))`` (float64), the number of unselected positions before the next one;
* positions: ``pos_0 = g_0`` and ``pos_k = pos_{k-1} + 1 + g_k``, stopping at the first position >= n.

The stream depends only on NumPy's PCG64 and SeedSequence, whose outputs NumPy keeps stable across releases,
so the indices are the same on every device and every torch version. The ``seed`` adapter encoding stores a
checksum of the indices and verifies it when the indices are regenerated.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import numpy as np

_CHUNK_MIN = 1 << 12
_CHUNK_MAX = 1 << 22


def _bit_generator(seed: int, name: str, shape: Sequence[int]) -> np.random.PCG64:
    material = f"sparta-v1|{seed}|{name}|{'x'.join(str(int(s)) for s in shape)}".encode()
    entropy = int.from_bytes(hashlib.sha256(material).digest()[:16], "little")
    return np.random.PCG64(np.random.SeedSequence(entropy))


def _position_chunks(
    n: int, density: float, seed: int, name: str, shape: Sequence[int]
) -> Iterator[np.ndarray]:
    """Yield sorted int64 arrays of selected flat positions, in increasing order, covering [0, n)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if n == 0:
        return
    if density == 1.0:
        for start in range(0, n, _CHUNK_MAX):
            yield np.arange(start, min(n, start + _CHUNK_MAX), dtype=np.int64)
        return
    gen = _bit_generator(seed, name, shape)
    log_q = math.log1p(-density)
    expected = density * n
    # Chunk sizes depend only on (n, density): the indices never depend on how the stream was consumed.
    chunk = int(min(_CHUNK_MAX, max(_CHUNK_MIN, expected + 6.0 * math.sqrt(expected) + 16)))
    next_pos = 0  # position the next gap is counted from
    while next_pos < n:
        raw = gen.random_raw(chunk)
        u = ((raw >> np.uint64(11)).astype(np.float64) + 1.0) * (2.0**-53)
        gaps = np.floor(np.log(u) / log_q)
        np.minimum(gaps, float(n), out=gaps)  # huge gaps (tiny densities) end the tensor; keep int64 safe
        positions = np.cumsum(gaps.astype(np.int64) + 1) + (next_pos - 1)
        keep = int(np.searchsorted(positions, n, side="left"))
        if keep:
            yield positions[:keep]
        if keep < chunk:
            return
        next_pos = int(positions[-1]) + 1


def sample_indices(n: int, density: float, seed: int, name: str, shape: Sequence[int]) -> np.ndarray:
    """Sorted flat int64 positions in [0, n), each selected independently with probability ``density``."""
    chunks = list(_position_chunks(n, density, seed, name, shape))
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)


def count_indices(n: int, density: float, seed: int, name: str, shape: Sequence[int]) -> int:
    """The number of positions :func:`sample_indices` selects, streaming in bounded memory (for meta-device sizing)."""
    return sum(len(c) for c in _position_chunks(n, density, seed, name, shape))


def indices_checksum(flat_indices: np.ndarray) -> str:
    """SHA-256 (hex, first 16 chars) of the little-endian int64 bytes of the sorted flat indices."""
    return hashlib.sha256(np.ascontiguousarray(flat_indices, dtype="<i8").tobytes()).hexdigest()[:16]
