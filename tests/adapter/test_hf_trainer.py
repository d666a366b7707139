"""HF Trainer with a SpartaModel: adapter-only checkpoints, exact resume, gradient checkpointing (TRL: in
tests/train/test_train_trl.py, beside the tiny tokenizer it needs)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import Trainer, TrainingArguments

from sparta import SpartaConfig, SpartaError, get_sparta_model
from tinyconfigs import tiny_causal_lm, tiny_classifier

torch.set_num_threads(1)  # tiny models: threads only add contention


def _model(kind: str):
    """A SpaRTA-wrapped tiny classifier (3 labels, trained `score` head) or tied-embedding causal LM."""
    base = (
        tiny_classifier(seed=0) if kind == "classifier" else tiny_causal_lm(seed=0, tie_word_embeddings=True)
    )
    if kind == "tied-lm":
        assert base.lm_head.weight is base.model.embed_tokens.weight
    return get_sparta_model(base, SpartaConfig(density=0.1, seed=0))


def _data(kind: str, n: int = 24) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(1, 128, (8,), generator=g)
        rows.append({"input_ids": ids, "labels": torch.tensor(i % 3) if kind == "classifier" else ids})
    return rows


def _trainer(model, kind: str, out: Path, max_steps: int, save_steps: int) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="steps",
        save_steps=save_steps,
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=_data(kind))


def _full_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.base_model.parameters())


@pytest.mark.parametrize("kind", ["tied-lm", "classifier"])
def test_trainer_checkpoints_hold_only_the_adapter(tmp_path, kind):
    """Before: the tied LM raised 'Some tensors share memory' on every save, the classifier saved the whole model."""
    sm = _model(kind)
    trainer = _trainer(sm, kind, tmp_path, max_steps=4, save_steps=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    expected = set(sm.adapter_state_names())
    assert any(n.endswith("sparta_delta") for n in expected)
    assert any(".score." in n for n in expected) == (kind == "classifier")
    for folder in ("checkpoint-2", "checkpoint-4", "final"):
        file = tmp_path / folder / "model.safetensors"
        with safe_open(str(file), framework="pt") as f:
            assert set(f.keys()) == expected
        assert file.stat().st_size < _full_bytes(sm) / 5
    # the saved tensors are the trained ones
    with safe_open(str(tmp_path / "final" / "model.safetensors"), framework="pt") as f:
        for name, value in sm.state_dict().items():
            assert torch.equal(f.get_tensor(name), value)
    assert any(v.abs().sum() > 0 for n, v in sm.state_dict().items() if n.endswith("sparta_delta"))


@pytest.mark.parametrize("kind", ["tied-lm", "classifier"])
def test_resume_from_a_trainer_checkpoint_equals_an_uninterrupted_run(tmp_path, kind):
    straight = _model(kind)
    _trainer(straight, kind, tmp_path / "a", max_steps=6, save_steps=3).train()
    resumed = _model(kind)
    _trainer(resumed, kind, tmp_path / "b", max_steps=6, save_steps=3).train(
        resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3")
    )
    final, again = straight.state_dict(), resumed.state_dict()
    assert final.keys() == again.keys()
    for name in final:
        torch.testing.assert_close(again[name], final[name], rtol=0, atol=1e-7)
    # and the merged weights follow the loaded deltas
    ids = torch.randint(1, 128, (2, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(resumed(input_ids=ids).logits, straight(input_ids=ids).logits)


def test_load_state_dict_writes_adapter_tensors_only():
    sm = _model("classifier")
    state = {n: torch.full_like(v, 0.5) for n, v in sm.state_dict().items()}
    embed = "base_model.model.embed_tokens.weight"
    before = sm.base_model.model.embed_tokens.weight.detach().clone()
    result = sm.load_state_dict({**state, embed: torch.zeros_like(before)}, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == [embed]
    assert torch.equal(sm.base_model.model.embed_tokens.weight, before)
    assert all(torch.equal(v, state[n]) for n, v in sm.state_dict().items())
    layer = sm.base_model.model.layers[0].self_attn.q_proj
    sm(input_ids=torch.tensor([[1, 2, 3]]))  # the next forward merges the loaded deltas
    assert torch.equal(layer.weight.view(-1)[layer.sparta_flat], layer.sparta_orig + 0.5)
    with pytest.raises(SpartaError, match="1 adapter tensor"):
        sm.load_state_dict(dict(list(state.items())[1:]))


def _delta_grads(model, ids, labels) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=labels).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if n.endswith("sparta_delta")}


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_delta_gradients(reentrant):
    sm = _model("classifier").train()
    ids = torch.randint(1, 128, (4, 10), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 1])
    plain = _delta_grads(sm, ids, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # not through transformers' deprecated alias
        sm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert sm.base_model.model.gradient_checkpointing
    checkpointed = _delta_grads(sm, ids, labels)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        assert checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], grad)
    sm.gradient_checkpointing_disable()
    assert not sm.base_model.model.gradient_checkpointing
    # the input-grad hook is gone with it: frozen embeddings give an output that needs no grad again
    assert not sm.base_model.model.embed_tokens(ids).requires_grad


def test_save_pretrained_takes_transformers_keywords(tmp_path):
    sm = _model("classifier")
    sm.save_pretrained(tmp_path / "not-main", is_main_process=False, max_shard_size="5GB")
    assert not (tmp_path / "not-main").exists()
    with pytest.raises(SpartaError, match="never pickle"):
        sm.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    with pytest.raises(SpartaError, match="takes no state_dict"):
        sm.save_pretrained(tmp_path / "sd", state_dict=sm.state_dict())
    assert (sm.save_pretrained(tmp_path / "a") / "adapter_model.safetensors").is_file()
