"""The training tests run on one thread (the tiny-model fixtures are in tests/conftest.py)."""

from __future__ import annotations

import torch

# The tiny models gain nothing from intra-op threads, and on a busy 2-core machine the thread pool's contention
# makes them ~40x slower; one thread keeps these tests fast and their results unchanged.
torch.set_num_threads(1)
