import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from sparta import methods as M
from sparta.adapter import native
from sparta.models import load_model, load_tokenizer, resolve_model
from sparta.objectives import Classification
from sparta.objectives.batching import collate
from sparta.objectives.heads import init_base_head
from sparta.runs import evaluate, open_model
from sparta.train import TrainConfig, train
from sparta.train.stopping import EarlyStopping
from tinylm import toy_examples


def tiny_setup(model_dir, method, **cfg):
    resolved = resolve_model(str(model_dir))
    tok = load_tokenizer(resolved)
    model = load_model(resolved, task="classification", num_labels=2)
    model.config.pad_token_id = tok.pad_token_id
    init_base_head(model)
    wrapped = M.get_method(method).apply(model, TrainConfig(method=method, **cfg), Classification())
    return model, wrapped, tok


def few_steps(wrapped, tok, steps=3, lr=1e-2):
    rows = toy_examples(16, seed=7)
    batch = collate([tok(r["text"])["input_ids"] for r in rows], tok.pad_token_id, "right")
    labels = torch.tensor([r["label"] for r in rows])
    opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        F.cross_entropy(wrapped(**batch).logits, labels).backward()
        opt.step()
        opt.zero_grad()


def changed(before, after):
    return {n for n in before if not torch.equal(before[n], after[n])}


def test_head_method_changes_only_the_score_weight(base_model_dir):
    model, wrapped, tok = tiny_setup(base_model_dir, "head")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    few_steps(wrapped, tok)
    assert changed(before, dict(model.named_parameters())) == {"score.weight"}


def test_sparta_changes_only_the_sampled_entries_of_the_targets_and_the_head(base_model_dir):
    model, wrapped, tok = tiny_setup(base_model_dir, "sparta", density=0.1, targets="v_proj,o_proj")
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("sparta_delta") or ".score." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "sparta" not in n}
    few_steps(wrapped, tok)
    wrapped.sync_weights()
    after = {n: p.detach() for n, p in model.named_parameters() if "sparta" not in n}
    touched = changed(before, after)
    assert "score.weight" in touched
    assert touched - {"score.weight"} and all(
        n.endswith(("v_proj.weight", "o_proj.weight", "score.weight")) for n in touched
    )
    indices = wrapped.delta_indices()
    for name in touched - {"score.weight"}:
        diff = (before[name] != after[name]).reshape(-1).nonzero().reshape(-1)
        allowed = set(indices[name].tolist())
        assert set(diff.tolist()) <= allowed  # only entries at the sampled positions phi


def test_index_seed_picks_the_index_set_independently_of_the_training_seed(base_model_dir):
    def indices(**cfg):
        return tiny_setup(base_model_dir, "sparta", density=0.1, targets="v_proj", **cfg)[1].delta_indices()

    same, other, by_index_seed = indices(seed=0), indices(seed=5), indices(seed=5, index_seed=0)
    assert same.keys() == other.keys() == by_index_seed.keys()
    assert all(torch.equal(same[n], by_index_seed[n]) for n in same)
    assert not all(torch.equal(same[n], other[n]) for n in same)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_and_dora_train_adapters_and_the_head_not_the_base(base_model_dir, method):
    model, wrapped, tok = tiny_setup(base_model_dir, method)
    base_before = {n: p.detach().clone() for n, p in wrapped.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("score" in n for n in trainable)
    if method == "dora":
        assert any("magnitude" in n for n in trainable)
    few_steps(wrapped, tok)
    assert not changed(
        base_before, {n: p.detach() for n, p in wrapped.named_parameters() if n in base_before}
    )


def test_full_trains_every_parameter_including_embeddings(base_model_dir):
    model, wrapped, tok = tiny_setup(base_model_dir, "full")
    assert all(p.requires_grad for p in wrapped.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    few_steps(wrapped, tok)
    assert "model.embed_tokens.weight" in changed(before, dict(model.named_parameters()))


def test_early_stopping_keeps_and_restores_the_best_trainable_state(base_model_dir):
    model, wrapped, tok = tiny_setup(base_model_dir, "head")
    stopper = EarlyStopping(patience=2)
    losses = [0.9, 0.5, 0.7, 0.8]
    snapshots = []
    for step, loss in enumerate(losses, 1):
        with torch.no_grad():
            model.score.weight.add_(1.0)  # a different state at each evaluation
        snapshots.append(model.score.weight.detach().clone())
        stop = stopper.update(wrapped, step, {"loss": loss}, keep_state=True)
        assert stop == (step == 4)
    assert stopper.best_step == 2 and set(stopper.best_state) == {"score.weight"}  # trainable tensors only
    M.load_trainable_state(wrapped, stopper.best_state)
    torch.testing.assert_close(model.score.weight, snapshots[1], rtol=0, atol=0)


@pytest.mark.parametrize("method", ["sparta", "lora"])
def test_training_lowers_the_loss_on_a_learnable_toy_task(toy_config, method):
    cfg = toy_config(method=method, density=0.3, max_steps=30, lr=3e-2, eval_every=10, restore_best=False)
    results = train(cfg)
    history = results["history"]
    first = sum(h["train_loss"] for h in history[:5]) / 5
    last = sum(h["train_loss"] for h in history[-5:]) / 5
    assert last < first - 0.05
    assert results["metrics"]["dev"]["loss"] < results["zero_shot"]["dev"]["loss"] - 0.02


def test_results_json_shape_and_reload(toy_config, tmp_path, caplog):
    cfg = toy_config(method="sparta", density=0.2, max_steps=6, eval_every=3, early_stopping_patience=5)
    with caplog.at_level(logging.INFO, logger="sparta"):
        results = train(cfg)
    # SpaRTA on CPU says which delta-gradient kernel it runs on
    assert f"delta-gradient kernel: {native.status()}" in caplog.messages
    out = tmp_path / "run"
    on_disk = json.loads((out / "results.json").read_text())
    # the config as run: the precision resolved for this device (the suite's fp32, tests/conftest.py)
    assert on_disk["config"] == {**cfg.to_dict(), "precision": "fp32"}
    for key in ("trainable_params", "total_params", "peak_memory_mb", "train_seconds", "adapter_bytes"):
        assert isinstance(on_disk[key], int | float) and on_disk[key] > 0, key
    assert on_disk["trainable_params"] < on_disk["total_params"]
    assert set(on_disk["metrics"]) == {"dev", "test"}
    for split in ("dev", "test"):
        assert {"loss", "accuracy"} <= set(on_disk["metrics"][split])
        assert 0 <= on_disk["metrics"][split]["accuracy"] <= 1
        assert set(on_disk["zero_shot"][split]) == set(on_disk["metrics"][split])
    assert [h["step"] for h in on_disk["history"]] == list(range(1, 7))
    assert all("dev_loss" in h for h in on_disk["history"] if h["step"] in (3, 6))
    assert on_disk["metrics"]["dev"]["loss"] == pytest.approx(
        min(h["dev_loss"] for h in on_disk["history"] if "dev_loss" in h)
    )
    assert (out / "log.csv").read_text().splitlines()[0].startswith("step,")
    assert (out / "adapter").is_dir() and (out / "run.json").is_file() and (out / "tokenizer").is_dir()
    assert on_disk["data"]["train"] == 96 and on_disk["data"]["train_dropped_too_long"] == 0
    # the saved adapter reproduces the reported test metrics
    metrics = evaluate(open_model(out, device="cpu"), None, "test")
    assert metrics["loss"] == pytest.approx(results["metrics"]["test"]["loss"], rel=1e-4)
    assert math.isfinite(metrics["loss"])


def test_long_training_examples_are_dropped_and_counted(toy_config):
    results = train(toy_config(method="head", max_steps=2, max_length=6, zero_shot=False))
    assert 0 < results["data"]["train_dropped_too_long"] < 96
    assert results["data"]["train"] == 96 - results["data"]["train_dropped_too_long"]
    assert results["zero_shot"] is None


def test_a_finished_run_is_not_overwritten_without_overwrite(toy_config):
    from sparta.errors import SpartaError

    train(toy_config(method="head", max_steps=1, zero_shot=False))
    with pytest.raises(SpartaError, match="--overwrite"):
        train(toy_config(method="head", max_steps=1, zero_shot=False))
    again = train(toy_config(method="head", max_steps=2, zero_shot=False, overwrite=True))
    assert again["steps"] == 2
