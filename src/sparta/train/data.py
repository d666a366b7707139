"""Tokenisation, length filtering, length-grouped batching and collation.

Inputs are formatted by the task (`sparta.tasks.format_input`: a chat-templated instruction for instruct models,
the raw text for base models) and tokenised once up front. Instruct inputs already hold the template's special
tokens, so they are tokenised without adding any; base inputs get the tokenizer's usual special tokens (BOS).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from sparta.errors import SpartaError


@dataclass
class Encoded:
    """A tokenised split: token ids per example, the labels, and how many examples were dropped as too long."""

    input_ids: list[list[int]]
    labels: list[int]
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode_texts(texts: Sequence[str], tokenizer, add_special_tokens: bool) -> list[list[int]]:
    """Tokenise texts (no padding, no truncation)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens, padding=False, truncation=False)
    ids = [list(x) for x in encoded["input_ids"]]
    pad_id = tokenizer.pad_token_id
    for i, seq in enumerate(ids):
        if not seq:
            raise SpartaError(f"example {i} tokenises to nothing; check its text fields")
        if seq[-1] == pad_id:
            # The classification head pools the last non-pad token, so a sequence ending in the pad token
            # would be pooled at the wrong position.
            raise SpartaError(
                f"example {i} ends with the pad token id {pad_id}; give the tokenizer a dedicated pad token"
            )
    return ids


def encode_split(
    examples: Sequence[dict],
    task,
    tokenizer,
    instruct: bool,
    template: str | None = None,
    max_length: int | None = None,
    truncate: bool = False,
) -> Encoded:
    """Format and tokenise examples; longer than max_length: dropped (training) or left-truncated (truncate=True).

    Left truncation keeps the end of the input, where an instruct prompt's generation marker sits.
    """
    from sparta.tasks import format_input

    texts = [format_input(task, ex, tokenizer, instruct=instruct, template=template) for ex in examples]
    ids = encode_texts(texts, tokenizer, add_special_tokens=not instruct)
    labels = [int(ex["label"]) for ex in examples]
    if max_length is None:
        return Encoded(ids, labels)
    if truncate:
        return Encoded([seq[-max_length:] for seq in ids], labels)
    keep = [i for i, seq in enumerate(ids) if len(seq) <= max_length]
    return Encoded([ids[i] for i in keep], [labels[i] for i in keep], dropped=len(ids) - len(keep))


def collate(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    padding_side: str = "right",
    labels: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a batch; with left padding, position ids restart at 0 on each sequence's first real token."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
        input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, span] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
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
    data: Encoded, batches: list[list[int]], pad_id: int, padding_side: str
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield (example indices, collated batch) for each batch of indices."""
    for idx in batches:
        yield (
            idx,
            collate([data.input_ids[i] for i in idx], pad_id, padding_side, [data.labels[i] for i in idx]),
        )


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
