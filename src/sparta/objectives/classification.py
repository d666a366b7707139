"""The classification objective: sequence classification with a linear head on the last real token.

Inputs are formatted by the task (`sparta.tasks.format_input`: a chat-templated instruction for instruct models,
the raw text for base models) and tokenised once up front. Instruct inputs already hold the template's special
tokens, so they are tokenised without adding any; base inputs get the tokenizer's usual special tokens (BOS).
The loss is the mean cross-entropy over the examples of an optimizer step; the metrics are the task's
(accuracy, MCC, F1) plus that loss. Heads start as described in `sparta.objectives.heads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparta.adapter.config import HEAD_MODULES
from sparta.errors import SpartaError
from sparta.objectives.base import Objective, Rate
from sparta.objectives.batching import collate, forward_batches
from sparta.objectives.examples import example_key
from sparta.objectives.heads import init_base_head, init_instruct_head
from sparta.objectives.language_modelling import LanguageModellingOptions
from sparta.options import default_of
from sparta.tasks import compute_metrics, field_texts, format_input

SST2_PROTOCOL = "measured, docs/RESULTS.md SST-2 protocol"


@dataclass
class Encoded:
    """A tokenised split: token ids per example, the labels, how many examples were dropped as too long, and for
    an encoder's sentence pairs the segment ids."""

    input_ids: list[list[int]]
    labels: list[int]
    dropped: int = 0
    token_type_ids: list[list[int]] | None = None

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
    encoder: bool = False,
) -> Encoded:
    """Format and tokenise examples; longer than max_length: dropped (training) or truncated (truncate=True).

    Decoders are truncated from the left, keeping the end of the input, where an instruct prompt's generation
    marker sits and the head pools. Encoders (`encoder=True`) pool the first token, so they are truncated from
    the right; a two-field task without a template is given to them as a sentence pair (the tokenizer's pair
    encoding, with segment ids), as they were pretrained, instead of one labelled text.
    """
    labels = [int(ex["label"]) for ex in examples]
    if encoder:
        return _encode_for_encoder(examples, labels, task, tokenizer, template, max_length, truncate)
    texts = [format_input(task, ex, tokenizer, instruct=instruct, template=template) for ex in examples]
    ids = encode_texts(texts, tokenizer, add_special_tokens=not instruct)
    if max_length is None:
        return Encoded(ids, labels)
    if truncate:
        return Encoded([seq[-max_length:] for seq in ids], labels)
    keep = [i for i, seq in enumerate(ids) if len(seq) <= max_length]
    return Encoded([ids[i] for i in keep], [labels[i] for i in keep], dropped=len(ids) - len(keep))


def _encode_for_encoder(examples, labels, task, tokenizer, template, max_length, truncate) -> Encoded:
    if not examples:
        return Encoded([], [])
    cut = {"truncation": "longest_first", "max_length": max_length} if truncate and max_length else {}
    if len(task.text_fields) == 2 and template is None:
        first, second = task.text_fields
        values = [field_texts(task, ex) for ex in examples]
        out = tokenizer([v[first] for v in values], [v[second] for v in values], **cut)
    else:
        out = tokenizer([format_input(task, ex, template=template) for ex in examples], **cut)
    ids = [list(x) for x in out["input_ids"]]
    types = [list(x) for x in out["token_type_ids"]] if "token_type_ids" in out else None
    keep = [i for i, seq in enumerate(ids) if truncate or max_length is None or len(seq) <= max_length]
    return Encoded(
        [ids[i] for i in keep],
        [labels[i] for i in keep],
        len(ids) - len(keep),
        [types[i] for i in keep] if types is not None else None,
    )


def batch_loss(model: nn.Module, data: Encoded, idx: list[int], pad_id: int, padding_side: str, device):
    """Summed cross-entropy of the examples `idx` (a 0-dim float32 tensor with a graph)."""
    types = [data.token_type_ids[i] for i in idx] if data.token_type_ids is not None else None
    batch = collate([data.input_ids[i] for i in idx], pad_id, padding_side, token_type_ids=types)
    labels = torch.tensor([data.labels[i] for i in idx], dtype=torch.long, device=device)
    logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
    return F.cross_entropy(logits, labels, reduction="sum")


def logits(
    model: nn.Module, data: Encoded, batch_size: int, pad_id: int, padding_side: str, device, rt: Any = None
) -> torch.Tensor:
    """(N, C) float32 logits of a sequence classifier in example order (see `forward_batches`)."""
    was_training = model.training
    model.eval()
    out = forward_batches(
        lambda b: {"logits": model(**b).logits}, data, batch_size, pad_id, padding_side, device, rt
    )
    model.train(was_training)
    return out.get("logits", torch.empty(0, 0))


def metrics(
    task, scores: torch.Tensor, labels: Sequence[int], records: list | None = None, data: Any = None
) -> dict[str, float]:
    """The mean cross-entropy `loss` and the task's metrics for (N, C) logits; given a `records` list and the
    encoded `data`, also each example's label, prediction, correctness and loss (`sparta.objectives.examples`)."""
    target = torch.tensor(list(labels), dtype=torch.long)
    loss = F.cross_entropy(scores, target).item()
    if records is not None:
        losses = F.cross_entropy(scores, target, reduction="none").tolist()
        predicted = scores.argmax(-1).tolist()
        for i, (y, p, nll) in enumerate(zip(target.tolist(), predicted, losses, strict=True)):
            key = example_key(data.input_ids[i]) if data is not None else None
            records.append(
                {"index": i, "key": key, "label": y, "predicted": p, "correct": p == y, "loss": nll}
            )
    return {"loss": loss, **compute_metrics(task, scores, target, loss=loss)}


class Classification(Objective):
    """The plug-in the training loop and the run layer ask for everything that depends on the kind of task."""

    name = "classification"
    model_kind = (
        "classification"  # what `sparta.models.load_model` builds: AutoModelForSequenceClassification
    )
    peft_task_type = "SEQ_CLS"
    head_modules = HEAD_MODULES  # trained fully by every method that has a head (those the model has)
    rates = {  # measured (docs/RESULTS.md), see sparta.train.rates
        "sparta": (
            Rate(
                3e-3, f"{SST2_PROTOCOL}: best of 3e-4/1e-3/3e-3 on dev for Wv,Wo at 3.47%", min_density=0.02
            ),
            Rate(1e-3, "measured, docs/RESULTS.md: all-linear 1% (merging runs, density sweep)"),
        ),
        "lora": (Rate(3e-3, f"{SST2_PROTOCOL}: best of 3e-4/1e-3/3e-3 on dev for LoRA r=8"),),
        "dora": (Rate(3e-3, "LoRA's measured rate (DoRA not measured)"),),
        "head": (Rate(1e-3, f"{SST2_PROTOCOL}: head only, 1e-3 over 3e-4 on dev"),),
        "full": (
            Rate(3e-5, "measured once, docs/RESULTS.md density sweep (Full FT); convention 1e-5 - 5e-5"),
        ),
    }

    encode = staticmethod(encode_split)
    batch_loss = staticmethod(batch_loss)
    metrics = staticmethod(metrics)

    def check(self, cfg: Any) -> None:
        """Settings of language modelling have no meaning for a classifier: refused rather than ignored."""
        # SFT's own options (declared by that objective) and the GSM8K target option of the task overrides;
        # eval_generate=false is no request at all, so False passes as the default does
        lm_only = {f.name: default_of(f) for f in fields(LanguageModellingOptions)} | {
            "keep_calculator": False
        }
        given = [k for k, default in lm_only.items() if getattr(cfg, k, default) not in (default, False)]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise SpartaError(
                f"{flags} apply to language-modelling tasks; {cfg.task} is a classification task"
            )

    @staticmethod
    def units(data: Encoded, idx: list[int]) -> int:
        """What a step's loss is averaged over: examples."""
        return len(idx)

    @staticmethod
    def metric_names(task) -> list[str]:
        return list(task.metrics)

    @staticmethod
    def evaluate(
        model,
        data: Encoded,
        task,
        batch_size: int,
        pad_id: int,
        padding_side: str,
        device,
        rt=None,
        records: list | None = None,
    ):
        """The task's metrics plus the mean cross-entropy loss on one split (`records`: per example, too)."""
        scores = logits(model, data, batch_size, pad_id, padding_side, device, rt)
        return metrics(task, scores, data.labels, records, data)

    @staticmethod
    def init_head(
        model: nn.Module,
        tokenizer,
        task,
        instruct: bool,
        prompt: str | None,
        path: str | Path | None,
        seed: int,
    ) -> dict:
        """Base models: random N(0, (0.06/sqrt d)^2). Instruct models: label-word rows of the LM output embeddings."""
        if instruct:
            return {
                "kind": "label_words",
                **init_instruct_head(model, tokenizer, task.label_words, prompt, path),
            }
        return {"kind": "random", "std": init_base_head(model, seed=seed)}
