"""Every method that trains causal LMs, on tiny models of several families (Llama with tied and untied heads,
GPT-2's Conv1D layers, Qwen2's q/k/v biases, Gemma 2's soft-capped logits): a few SFT steps lower the loss, only
the intended tensors change, and SpaRTA leaves the frozen base weights bit for bit as they were."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sparta.errors import SpartaError
from sparta.methods import get_method
from sparta.objectives import Classification, LanguageModelling
from tinysft import FAMILIES, random_lm_data, tiny_lm

LM = LanguageModelling()


def run_cfg(family: str, method: str, lm_head: str = "frozen") -> SimpleNamespace:
    targets = ["c_attn"] if family == "gpt2" and method in ("lora", "dora") else None
    return SimpleNamespace(
        method=method,
        density=0.2,
        targets=targets,
        seed=0,
        index_seed=None,
        lora_r=4,
        lora_alpha=8.0,
        lora_dropout=0.0,
        lm_head=lm_head,
    )


def sft_steps(net, steps: int = 8, lr: float = 1e-2) -> list[float]:
    data, idx = random_lm_data(6, seed=11), [0, 1, 2, 3, 4, 5]
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    net.train()
    losses = []
    for _ in range(steps):
        loss = LM.batch_loss(net, data, idx, 0, "right", "cpu") / LM.units(data, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}


@pytest.mark.parametrize("family", FAMILIES)
def test_sparta_sft_changes_only_the_sampled_positions(family):
    model = tiny_lm(family)
    before = snapshot(model)
    net = get_method("sparta").apply(model, run_cfg(family, "sparta"), LM)
    losses = sft_steps(net)
    assert losses[-1] < losses[0]
    assert all(n.endswith("sparta_delta") for n, p in net.named_parameters() if p.requires_grad)
    net.sync_weights()
    phi = {name: flat for name, flat in net.delta_indices().items()}
    merged = {n.removeprefix("base_model."): p for n, p in net.named_parameters(remove_duplicate=False)}
    for name, value in before.items():
        now = merged[name].detach()
        moved = (now != value).reshape(-1).nonzero().flatten()
        if name in phi:
            assert moved.numel() > 0 and set(moved.tolist()) <= set(phi[name].tolist()), name
        else:
            assert moved.numel() == 0, name  # embeddings, norms, the LM head: untouched
    base = net.unload()
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters(remove_duplicate=False))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_and_dora_sft_train_their_adapter_only(family, method):
    model = tiny_lm(family)
    before = snapshot(model)
    net = get_method(method).apply(model, run_cfg(family, method), LM)
    assert net.peft_config["default"].task_type == "CAUSAL_LM"
    losses = sft_steps(net)
    assert losses[-1] < losses[0]
    for name, p in net.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
        else:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert not p.requires_grad and torch.equal(p, before[key]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_full_sft_trains_every_tensor(family):
    model = tiny_lm(family)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    before = snapshot(model)
    net = get_method("full").apply(model, run_cfg(family, "full"), LM)
    losses = sft_steps(net, lr=1e-3)
    assert losses[-1] < losses[0]
    assert all(not torch.equal(p, before[n]) for n, p in net.named_parameters(remove_duplicate=False)), (
        "some frozen"
    )
    assert (
        net.get_output_embeddings().weight is net.get_input_embeddings().weight
    ) == tied  # (lm_head frozen)


def _head_and_embeddings(model):
    from sparta.objectives.lm_head import causal_lm

    lm = causal_lm(model)
    return lm.get_output_embeddings(), lm.get_input_embeddings().weight


@pytest.mark.parametrize("family", ["llama-tied", "gpt2", "llama-untied"])
@pytest.mark.parametrize(
    ("method", "lm_head"),
    [
        ("sparta", "frozen"),
        ("sparta", "train"),
        ("sparta", "sparse"),
        ("lora", "frozen"),
        ("lora", "train"),
    ],
)
def test_lm_head_settings(family, method, lm_head):
    """frozen: head and embeddings exact; train: the head (untied first) trains, the embeddings stay exact;
    sparse: the head moves at its sampled positions only."""
    model = tiny_lm(family)
    embeddings_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    cfg = run_cfg(family, method, lm_head)
    heads = LM.heads(model, cfg)
    tied = family != "llama-untied"
    assert heads.untied == (tied and lm_head != "frozen")
    net = get_method(method).apply(model, cfg, LM, heads)
    losses = sft_steps(net)
    assert losses[-1] < losses[0]
    if hasattr(net, "sync_weights"):
        net.sync_weights()
    head, embeddings = _head_and_embeddings(net)
    assert torch.equal(embeddings, embeddings_before) and not embeddings.requires_grad
    copies = getattr(head, "modules_to_save", None)  # PEFT trains a copy of the head
    trained_head = copies["default"] if copies is not None else head
    moved = (trained_head.weight.detach() != head_before).reshape(-1).nonzero().flatten()
    if lm_head == "frozen":
        assert moved.numel() == 0
    elif lm_head == "train":
        assert moved.numel() > head_before.numel() // 2
    else:
        assert moved.numel() > 0 and set(moved.tolist()) <= set(
            net.delta_indices()["lm_head.weight"].tolist()
        )


def test_head_method_and_sparse_heads_are_refused_where_they_do_not_apply():
    model = tiny_lm("llama-untied")
    with pytest.raises(SpartaError, match="classification head"):
        get_method("head").apply(model, run_cfg("llama-untied", "head"), LM)
    with pytest.raises(SpartaError, match="sparsely"):
        get_method("lora").apply(model, run_cfg("llama-untied", "lora", "sparse"), LM)
    with pytest.raises(SpartaError, match="language-modelling"):
        Classification().check(
            SimpleNamespace(
                task="sst2", lm_head="train", loss_on="assistant", eval_generate=None, keep_calculator=False
            )
        )
