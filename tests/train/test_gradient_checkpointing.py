"""--gradient-checkpointing: SpaRTA's deltas and LoRA's weights get the gradients they get without it, in both of
PyTorch's checkpoint modes, although the embeddings (the blocks' inputs) are frozen."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sparta.methods import get_method
from sparta.objectives import LanguageModelling
from sparta.train.setup import enable_gradient_checkpointing
from tinysft import random_lm_data, tiny_lm

LM = LanguageModelling()
CFG = SimpleNamespace(
    method="sparta",
    density=0.2,
    targets=None,
    seed=0,
    index_seed=None,
    lora_r=4,
    lora_alpha=8.0,
    lora_dropout=0.0,
    lm_head="frozen",
)


def trainable_grads(
    method: str, reentrant: bool | None, input_grads: bool = True, lm_head: str = "frozen"
) -> dict[str, torch.Tensor]:
    """Gradients of one SFT batch; `reentrant` None: no checkpointing; `input_grads=False` undoes the
    embeddings' requires-grad hook (what the re-entrant mode would be without it)."""
    model = tiny_lm("llama-tied")
    if reentrant is not None:
        enable_gradient_checkpointing(model, reentrant=reentrant)
        if not input_grads:
            model.disable_input_require_grads()
    cfg = SimpleNamespace(**{**vars(CFG), "lm_head": lm_head})
    net = get_method(method).apply(model, cfg, LM)
    net.train()
    assert all(layer.gradient_checkpointing == (reentrant is not None) for layer in model.model.layers)
    data = random_lm_data(4, seed=3)
    LM.batch_loss(net, data, [0, 1, 2, 3], 0, "right", "cpu").backward()
    return {n: p.grad for n, p in net.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["sparta", "lora"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_gives_the_same_gradients(method, reentrant):
    plain = trainable_grads(method, None)
    checkpointed = trainable_grads(method, reentrant)
    assert set(plain) == set(checkpointed) and plain
    for name, g in plain.items():
        assert checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_reentrant_checkpointing_needs_the_input_grads():
    """Without inputs that require grad the re-entrant checkpoint records no graph through the blocks: the deltas
    inside them get no gradient at all, silently where something after the blocks trains (here the LM head),
    which is why `enable_gradient_checkpointing` sets the hook."""
    with pytest.warns(UserWarning, match="requires_grad"):
        silent = trainable_grads("sparta", True, input_grads=False, lm_head="train")
    inside = [n for n in silent if ".layers." in n]
    assert (
        inside and all(silent[n] is None for n in inside) and silent["base_model.lm_head.weight"] is not None
    )
    fixed = trainable_grads("sparta", True, lm_head="train")
    assert all(fixed[n] is not None and fixed[n].abs().sum() > 0 for n in inside)
