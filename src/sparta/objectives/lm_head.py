"""The LM head of a causal LM, run only where a loss is taken, a chunk of rows at a time.

A (tokens x vocabulary) logits tensor is the largest thing a causal-LM step would otherwise hold: 16 x 512 tokens
of SmolLM2 (49,152 words) are 1.6 GB of float32 logits, and as much again for their gradient. Here the model's
forward is asked for its final hidden state and the logits of one position only (`output_hidden_states=-1`,
`logits_to_keep=1`; every family checked keeps only that state, after the final norm: the input of its LM head),
the hidden states of the loss positions are selected, and `chunked_nll` projects them `chunk_rows` at a time.

`chunked_nll` is one `torch.autograd.Function` whose forward computes, per chunk, the logits, their
cross-entropy and, right away, its gradients (for the hidden rows and any trainable tensor of the head), then
drops the chunk's logits: nothing of vocabulary size is kept for backward and nothing is recomputed there;
backward only scales the stored gradients by the incoming one. So the peak is one chunk's logits and their
gradient (`CHUNK_ELEMENTS` rows x vocabulary), whatever the number of tokens. The head is called as the module
it is (plain Linear, SpaRTA's sparse layer, PEFT's modules_to_save copy or LoRA layer), so every adapter applies.

Models' own logit transforms are applied after the projection, in float32: Gemma 2/3's
`final_logit_softcapping`, Cohere's `logit_scale`, Granite's `logits_scaling`. The first batch of each head is
checked against the logits the model itself returned for the last position, so a family that transforms its
logits some other way is a clear error instead of a silently different loss.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from sparta.adapter.model import SpartaModel
from sparta.errors import SpartaError

CHUNK_ELEMENTS = (
    2**24
)  # rows x vocabulary per chunk: 64 MiB of float32 logits (341 rows of SmolLM2's vocabulary)
_CHECKED: weakref.WeakSet = weakref.WeakSet()  # heads whose logits were compared with the model's own
_TOLERANCE = 1e-2  # of the largest logit: bf16 logits transformed in bf16 (the model) vs float32 (here)


def causal_lm(model: nn.Module) -> PreTrainedModel:
    """The transformers causal LM inside any wrapping: DDP (`.module`), PEFT, SpaRTA."""
    seen = model
    for _ in range(8):
        if isinstance(seen, PreTrainedModel):
            return seen
        if hasattr(seen, "get_base_model"):  # PEFT
            seen = seen.get_base_model()
        elif isinstance(seen, SpartaModel):
            seen = seen.base_model
        elif isinstance(getattr(seen, "module", None), nn.Module):  # DDP and other engine wrappers
            seen = seen.module
        else:
            break
    raise SpartaError(
        f"{type(model).__name__} is not a transformers causal LM (or one wrapped by PEFT/SpaRTA)"
    )


def text_configs(lm: PreTrainedModel) -> list:
    """The model's config and, for multimodal configs, its text config (where tie_word_embeddings may live)."""
    text = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    return [lm.config] if text is lm.config else [lm.config, text]


def output_module_name(model: nn.Module) -> str:
    """The name of the causal LM's output-embedding module (`lm_head` for every family in transformers)."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    name = next((n for n, m in lm.named_modules() if m is head), None)
    if head is None or not name:
        raise SpartaError(f"{type(lm).__name__} has no output-embedding module (LM head)")
    return name


def untie_lm_head(model: nn.Module) -> bool:
    """Give the LM head its own weight where it shares the input embeddings' (SmolLM2, Gemma, GPT-2); True if
    it did. The copy is a new Parameter with the same values; the input embeddings stay the same tensor, bit for
    bit, and `tie_word_embeddings` is set to false so that nothing ties them again (saving, loading)."""
    lm = causal_lm(model)
    head, embeddings = lm.get_output_embeddings(), lm.get_input_embeddings()
    tied = embeddings is not None and head is not None and head.weight is embeddings.weight
    if tied:
        shared = embeddings.weight
        head.weight = nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
    for config in text_configs(lm):
        config.tie_word_embeddings = False
    return tied


def logits_function(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden (N, d) -> float32 logits (N, V) as the model computes them: its head, then its own transforms."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    configs = text_configs(lm)
    softcap = next(
        (c.final_logit_softcapping for c in configs if getattr(c, "final_logit_softcapping", None)), None
    )
    scale = getattr(lm, "logit_scale", None)  # Cohere: a float attribute of the model (not a Parameter)
    divide = next((c.logits_scaling for c in configs if getattr(c, "logits_scaling", None)), None)  # Granite

    project = _cast_once(head)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = project(hidden).float()
        if isinstance(scale, float | int):
            out = out * scale
        if divide:
            out = out / divide
        if softcap:
            out = torch.tanh(out / softcap) * softcap
        return out

    return logits


def _cast_once(head: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`head` as a callable that, under autocast, casts a frozen plain-Linear weight once, not once per call.

    Autocast caches the casts of trainable leaf tensors only, so a frozen float32 head is cast to bf16 on every
    call: with the head applied chunk by chunk, one vocabulary x d cast per chunk (SmolLM2: 28M elements, 5
    chunks in an 8 x 256 SFT step). The copy lives as long as the returned
    callable (one batch) and is remade when the weight changes; the numbers are those of ``head(hidden)`` under
    autocast. Other heads (SpaRTA's sparse layer, PEFT's modules) are called as they are."""
    weight = getattr(head, "weight", None)
    if type(head) is not nn.Linear or weight is None or weight.requires_grad:
        return head
    cast: dict = {}

    def project(hidden: torch.Tensor) -> torch.Tensor:
        device = hidden.device.type
        if not torch.is_autocast_enabled(device):
            return head(hidden)
        dtype = torch.get_autocast_dtype(device)
        key = (weight.data_ptr(), weight._version, dtype)
        if cast.get("key") != key:
            cast.clear()  # the old copy goes before the new one is made
            cast.update(key=key, weight=weight.to(dtype))
        bias = None if head.bias is None else head.bias.to(dtype)
        return F.linear(hidden.to(dtype), cast["weight"], bias)

    return project


def forward_hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The final hidden state (B, T, d) of a causal LM through its (wrapped) forward, which computes the logits
    of one position only; the first call for each head checks the logit transforms (see the module docstring)."""
    lm = causal_lm(model)
    extra = {"output_hidden_states": -1, "use_cache": False}
    if "logits_to_keep" in inspect.signature(lm.forward).parameters:
        extra["logits_to_keep"] = 1
    out = model(**inputs, **extra)
    hidden = out.hidden_states[-1]
    head = lm.get_output_embeddings()
    if head not in _CHECKED and not _has_active_dropout(head):
        _check_transforms(lm, hidden[:, -1], out.logits[:, -1])
        _CHECKED.add(head)
    return hidden


def _has_active_dropout(module: nn.Module) -> bool:
    """A head with dropout in training mode (LoRA on the LM head) draws anew per call: nothing to compare."""
    return any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in module.modules())


@torch.no_grad()
def _check_transforms(lm: PreTrainedModel, hidden: torch.Tensor, reference: torch.Tensor) -> None:
    ours = logits_function(lm)(hidden)
    reference = reference.float()
    error = (ours - reference).abs().max().item()
    if not error <= _TOLERANCE * reference.abs().max().item() + 1e-5:
        raise SpartaError(
            f"{type(lm).__name__} computes its logits in a way sparta's chunked LM head does not reproduce "
            f"(largest difference {error:.3g}): this model family cannot be trained with language modelling yet"
        )


class _ChunkedNLL(torch.autograd.Function):
    """Summed cross-entropy of `logits(rows)` against `targets`; gradients computed in forward, chunk by chunk."""

    @staticmethod
    def forward(
        ctx, logits, chunk_rows: int, rows: torch.Tensor, targets: torch.Tensor, *params: torch.Tensor
    ):  # noqa: ANN001, ANN205
        wanted = [rows.requires_grad, *(p.requires_grad for p in params)]
        grad_rows = torch.zeros_like(rows)
        # accumulated over chunks in float32 (a bf16 head would otherwise round every partial sum)
        grad_params = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        for start in range(0, rows.shape[0], chunk_rows):
            part = slice(start, start + chunk_rows)
            with torch.enable_grad():
                h = rows[part].detach().requires_grad_(wanted[0])
                loss = F.cross_entropy(logits(h), targets[part], reduction="sum")
                inputs = [t for t, w in zip([h, *params], wanted, strict=True) if w]
                grads = iter(torch.autograd.grad(loss, inputs, allow_unused=True) if inputs else ())
            total += loss.detach()
            if wanted[0]:
                grad_rows[part] = next(grads)
            for acc, w in zip(grad_params, wanted[1:], strict=True):
                g = next(grads) if w else None
                if g is not None:
                    acc += g
        ctx.save_for_backward(grad_rows, *grad_params)
        ctx.dtypes = [p.dtype for p in params]
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):  # noqa: ANN001, ANN205
        grad_rows, *grad_params = ctx.saved_tensors
        scaled = [(g * grad_total).to(dtype) for g, dtype in zip(grad_params, ctx.dtypes, strict=True)]
        return None, None, grad_rows * grad_total.to(grad_rows.dtype), None, *scaled


def chunk_rows_for(vocab: int, chunk_elements: int | None = None) -> int:
    """Rows per chunk: `chunk_elements` (default `CHUNK_ELEMENTS`) logits, at least one row."""
    return max(1, (chunk_elements or CHUNK_ELEMENTS) // max(vocab, 1))


def chunked_nll(
    model: nn.Module, rows: torch.Tensor, targets: torch.Tensor, chunk_elements: int | None = None
) -> torch.Tensor:
    """Summed next-token NLL (0-dim float32) of hidden `rows` (N, d) against token ids `targets` (N,), through
    the model's LM head and logit transforms, never holding more than one chunk's logits (module docstring)."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    logits = logits_function(model)
    weight = getattr(head, "weight", None)
    vocab = getattr(head, "out_features", None) or (weight.shape[0] if weight is not None else 0)
    chunk = chunk_rows_for(vocab or text_configs(lm)[-1].vocab_size, chunk_elements)
    params: Sequence[torch.Tensor] = [p for p in head.parameters() if p.requires_grad]
    if torch.is_grad_enabled() and (rows.requires_grad or params):
        return _ChunkedNLL.apply(logits, chunk, rows, targets, *params)
    total = torch.zeros((), dtype=torch.float32, device=rows.device)
    with torch.no_grad():
        for start in range(0, rows.shape[0], chunk):
            part = slice(start, start + chunk)
            total += F.cross_entropy(logits(rows[part]), targets[part], reduction="sum")
    return total


class _ChunkedTokenNLL(torch.autograd.Function):
    """Per-row cross-entropy of `logits(rows)` against `targets` (N,), for a head with nothing to train: each
    row's NLL depends on its own row only, so the gradient of the summed NLL for the rows is also the gradient of
    each row's own NLL; backward scales each row's stored gradient by that row's incoming gradient."""

    @staticmethod
    def forward(ctx, logits, chunk_rows: int, rows: torch.Tensor, targets: torch.Tensor):  # noqa: ANN001, ANN205
        grad_rows = torch.zeros_like(rows)
        out = torch.zeros(rows.shape[0], dtype=torch.float32, device=rows.device)
        for start in range(0, rows.shape[0], chunk_rows):
            part = slice(start, start + chunk_rows)
            with torch.enable_grad():
                h = rows[part].detach().requires_grad_(True)
                nll = F.cross_entropy(logits(h), targets[part], reduction="none")
                (grad,) = torch.autograd.grad(nll.sum(), [h])
            out[part] = nll.detach()
            grad_rows[part] = grad
        ctx.save_for_backward(grad_rows)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        (grad_rows,) = ctx.saved_tensors
        return None, None, grad_rows * grad_out.to(grad_rows.dtype).unsqueeze(-1), None


def sequence_nll(
    model: nn.Module,
    rows: torch.Tensor,
    targets: torch.Tensor,
    segments: torch.Tensor,
    n: int,
    chunk_elements: int | None = None,
) -> torch.Tensor:
    """Summed next-token NLL per sequence, (n,) float32: row r belongs to sequence `segments[r]`. Same head and
    chunking as `chunked_nll`; a frozen head keeps one gradient row per hidden row (nothing of vocabulary size),
    a trainable head (lm_head train/sparse) runs `chunked_nll` once per sequence, each of which keeps its own
    gradient of the head's tensors until backward (memory: one head-sized gradient per sequence of the batch)."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    params = [p for p in head.parameters() if p.requires_grad]
    if torch.is_grad_enabled() and params:
        return torch.stack(
            [
                chunked_nll(model, rows[segments == k], targets[segments == k], chunk_elements)
                for k in range(n)
            ]
        )
    logits = logits_function(model)
    weight = getattr(head, "weight", None)
    vocab = getattr(head, "out_features", None) or (weight.shape[0] if weight is not None else 0)
    chunk = chunk_rows_for(vocab or text_configs(lm)[-1].vocab_size, chunk_elements)
    if torch.is_grad_enabled() and rows.requires_grad:
        per_row = _ChunkedTokenNLL.apply(logits, chunk, rows, targets)
    else:
        with torch.no_grad():
            per_row = torch.cat(
                [
                    F.cross_entropy(logits(rows[s : s + chunk]), targets[s : s + chunk], reduction="none")
                    for s in range(0, rows.shape[0], chunk)
                ]
            )
    out = torch.zeros(n, dtype=torch.float32, device=rows.device)
    return out.index_add(0, segments.to(rows.device), per_row)


def token_nll(
    model: nn.Module, rows: torch.Tensor, targets: torch.Tensor, chunk_elements: int | None = None
) -> torch.Tensor:
    """Next-token NLL of each hidden row (N,) float32, with a graph where gradients are enabled. A frozen head
    keeps one gradient row per hidden row (`_ChunkedTokenNLL`: nothing of vocabulary size); a trainable head
    (lm_head train/sparse) keeps each chunk's logits for backward, as plain autograd does."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    logits = logits_function(model)
    weight = getattr(head, "weight", None)
    vocab = getattr(head, "out_features", None) or (weight.shape[0] if weight is not None else 0)
    chunk = chunk_rows_for(vocab or text_configs(lm)[-1].vocab_size, chunk_elements)
    trainable = any(p.requires_grad for p in head.parameters())
    if torch.is_grad_enabled() and rows.requires_grad and not trainable:
        return _ChunkedTokenNLL.apply(logits, chunk, rows, targets)
    parts = [
        F.cross_entropy(logits(rows[s : s + chunk]), targets[s : s + chunk], reduction="none")
        for s in range(0, rows.shape[0], chunk)
    ]
    return torch.cat(parts) if parts else rows.new_zeros(0, dtype=torch.float32)
