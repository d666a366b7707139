"""Classification-head initialisation (paper section 6.3 and Appendix C).

The head is transformers' bias-free `score` layer (c x d) on the final hidden state of the last non-pad token.

* Base models: N(0, sigma^2) with sigma = 0.06 / sqrt(d), so both classes start near equal probability and the
  loss starts near log c.
* Instruct models: row k is a copy of the causal LM's output-embedding row of label word k's token ("No"/"Yes",
  "A".."D"), so before any training the head scores exactly the logits the LM gives those tokens. The copy is a new
  tensor: the head is never tied to the embeddings.

Label-token rule: a label word's token is the first token the tokenizer produces for the word when it directly
follows the formatted prompt (chat template with generation prompt), i.e. the token the model would generate
first. For Llama/GPT-style BPE after "assistant\\n" that is "Yes" rather than " Yes". If the prompt's tokens are not
a prefix of the tokens of prompt + word (a merge across the boundary), the first token of whichever of
"word" / " word" encodes to a single token (else of "word") is used. Distinct labels must get distinct tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from sparta.errors import SpartaError

HEAD_NAMES = ("score", "classifier")  # the attribute of a transformers sequence-classification head


def get_head(model: nn.Module) -> nn.Linear:
    """The final linear layer of a transformers *ForSequenceClassification model's head (`score`, `classifier`,
    or the `out_proj` of a RoBERTa-style classification head)."""
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(getattr(head, "out_proj", None), nn.Linear):
            return head.out_proj
        if isinstance(head, nn.Linear):
            return head
    raise SpartaError(f"{type(model).__name__} has no linear classification head ({' or '.join(HEAD_NAMES)})")


@torch.no_grad()
def init_base_head(model: nn.Module, seed: int = 0, std_scale: float = 0.06) -> float:
    """Draw the head from N(0, (std_scale / sqrt(d))^2) with its own seeded generator; returns the std used."""
    head = get_head(model)
    std = std_scale / math.sqrt(head.in_features)
    gen = torch.Generator().manual_seed(seed)
    head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * std)
    if head.bias is not None:
        head.bias.zero_()
    return std


def _single_token(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def label_token_id(tokenizer, word: str, prompt: str | None = None) -> int:
    """The token id of `word` as the model would generate it right after `prompt` (see the module docstring)."""
    if prompt is not None:
        head_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(prompt + word, add_special_tokens=False)["input_ids"]
        if len(full_ids) > len(head_ids) and full_ids[: len(head_ids)] == head_ids:
            return full_ids[len(head_ids)]
    for candidate in (word, " " + word):
        token = _single_token(tokenizer, candidate)
        if token is not None:
            return token
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SpartaError(f"label word {word!r} tokenises to nothing")
    return ids[0]


def label_token_ids(tokenizer, words: Sequence[str], prompt: str | None = None) -> list[int]:
    """Token ids for each label word; raises SpartaError if two labels share a token."""
    ids = [label_token_id(tokenizer, w, prompt) for w in words]
    if len(set(ids)) != len(ids):
        shown = ", ".join(
            f"{w!r}->{tokenizer.convert_ids_to_tokens(i)!r}" for w, i in zip(words, ids, strict=True)
        )
        raise SpartaError(f"label words map to the same token ({shown}); choose distinct label words")
    return ids


def _checkpoint_rows(model_path: str | Path, key: str, token_ids: Sequence[int]) -> torch.Tensor | None:
    """Rows of tensor `key` read lazily from a safetensors checkpoint directory, or None if it is not there."""

    path = Path(model_path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = [path / weight_map[key]] if key in weight_map else []
    else:
        files = sorted(path.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            if key in f.keys():  # noqa: SIM118 - safe_open handles have keys(), not __contains__
                return torch.stack([f.get_slice(key)[int(i)] for i in token_ids])
    return None


def output_embedding_rows(
    model: nn.Module, token_ids: Sequence[int], model_path: str | Path | None = None
) -> torch.Tensor:
    """The causal LM's output-embedding rows for token_ids, as a new tensor (never a view of the embeddings).

    Tied models: rows of the input embeddings. Untied models: rows of `lm_head.weight`, read from the checkpoint
    (the sequence-classification model does not load the LM head).
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    index = torch.tensor(list(token_ids), dtype=torch.long)
    if getattr(config, "tie_word_embeddings", False) or getattr(model.config, "tie_word_embeddings", False):
        weight = model.get_input_embeddings().weight
        return weight.detach()[index.to(weight.device)].clone().float().cpu()
    rows = _checkpoint_rows(model_path, "lm_head.weight", token_ids) if model_path else None
    if rows is None:
        raise SpartaError(
            f"cannot find lm_head.weight in {model_path} to initialise the instruct head; "
            "point --model at a local safetensors checkpoint"
        )
    return rows.float()


@torch.no_grad()
def init_instruct_head(
    model: nn.Module, tokenizer, label_words: Sequence[str], prompt: str | None, model_path: str | Path | None
) -> dict:
    """Copy the label words' output-embedding rows into the head; returns the chosen ids and tokens."""
    head = get_head(model)
    if len(label_words) != head.out_features:
        raise SpartaError(f"{len(label_words)} label words for a head with {head.out_features} outputs")
    ids = label_token_ids(tokenizer, label_words, prompt)
    rows = output_embedding_rows(model, ids, model_path)
    head.weight.copy_(rows.to(head.weight.dtype))
    if head.bias is not None:
        head.bias.zero_()
    return {
        "label_words": list(label_words),
        "token_ids": ids,
        "tokens": tokenizer.convert_ids_to_tokens(ids),
    }
