"""Batching shared by every objective: collation with left or right padding, length-grouped training batches,
the resumable training stream, and the one batched forward used for evaluation, prediction and feature caching.

A split is held as token-id lists (`Encoded` of an objective); batches are lists of example indices, so the same
split can be walked in training order (`BatchStream`) or longest-first (`sorted_batches`) without copying it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


def collate(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    padding_side: str = "right",
    labels: Sequence[int] | None = None,
    token_type_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a batch; with left padding, position ids restart at 0 on each sequence's first real token.

    `token_type_ids` (an encoder's sentence-pair segments) are padded with 0 alongside.
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    types = torch.zeros((len(sequences), width), dtype=torch.long) if token_type_ids is not None else None
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
        input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, span] = 1
        if types is not None:
            types[row, span] = torch.tensor(token_type_ids[row], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if types is not None:
        batch["token_type_ids"] = types
    if padding_side == "left":
        batch["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if labels is not None:
        batch["labels"] = torch.tensor(list(labels), dtype=torch.long)
    return batch


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, mega_factor: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar-length examples (as transformers' LengthGroupedSampler).

    Indices are shuffled, cut into mega-batches of `mega_factor * batch_size`, each sorted by length and cut into
    batches; then the batch order is shuffled. Padding waste drops while the data order stays random.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = mega_factor * batch_size
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic evaluation batches, longest first (the first batch shows the peak memory early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iter_batches(
    data: Any, batches: list[list[int]], pad_id: int, padding_side: str
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield (example indices, collated model inputs, no labels) for each batch of indices of `data`."""
    types = getattr(data, "token_type_ids", None)
    for idx in batches:
        segments = [types[i] for i in idx] if types is not None else None
        yield idx, collate([data.input_ids[i] for i in idx], pad_id, padding_side, token_type_ids=segments)


@torch.no_grad()
def forward_batches(
    forward: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    data: Any,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    device: torch.device | str,
    rt: Any = None,
) -> dict[str, torch.Tensor]:
    """Run `forward(inputs) -> {key: (B, ...) tensor}` over `data` in longest-first batches; returns each key's
    float32 outputs stacked in example order, on the CPU.

    With a multi-process runtime `rt` (`sparta.train.distributed.Runtime`), each rank runs every world-th batch and
    the outputs are gathered on all ranks. Where parameters are sharded every forward is a collective, so all ranks
    run as many forwards (stand-in batches, discarded).
    """
    every = sorted_batches(data.lengths, batch_size)
    batches, calls = every, len(every)
    if rt is not None and rt.distributed:
        batches = every[rt.rank :: rt.world]
        calls = -(-len(every) // rt.world) if rt.sharded else len(batches)
    stand_ins = every[:1] * (calls - len(batches))
    parts = []
    for idx, batch in iter_batches(data, batches + stand_ins, pad_id, padding_side):
        outputs = forward({k: v.to(device) for k, v in batch.items()})
        parts.append((idx, {k: v.float().cpu() for k, v in outputs.items()}))
    parts = parts[: len(batches)]
    if rt is not None and rt.distributed:
        parts = [part for rank_parts in rt.gather(parts) for part in rank_parts]
    if not parts:
        return {}
    out = {k: torch.empty(len(data.lengths), *v.shape[1:]) for k, v in parts[0][1].items()}
    for idx, outputs in parts:
        for k, v in outputs.items():
            out[k][idx] = v
    return out


class BatchStream:
    """The endless training stream of index batches: a fresh length-grouped shuffle per epoch.

    Epoch e is shuffled by `random.Random(seed * 1000 + e)`, so the stream is fully given by the seed and its
    position (epoch, index of the next batch in that epoch), which is what a checkpoint stores.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, epoch: int = 0, index: int = 0):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch, self.index = epoch, index
        self._batches = self._shuffle(epoch)

    def _shuffle(self, epoch: int) -> list[list[int]]:
        return length_grouped_batches(self.lengths, self.batch_size, random.Random(self.seed * 1000 + epoch))

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> list[int]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._shuffle(self.epoch)
        batch = self._batches[self.index]
        self.index += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}
