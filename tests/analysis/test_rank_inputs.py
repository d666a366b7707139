"""`sparta rank` inputs: the base must be the SpaRTA adapter's base, encoder names match up to the task model's
prefix (a tiny BERT), and `sparta train` run directories are accepted, with or without the base named."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel

import sparta.cli
from sparta import SpartaConfig, get_sparta_model
from sparta.analysis.rank import delta_ranks, full_model_ranks
from sparta.analysis.sources import match_names
from sparta.errors import SpartaError
from tinyconfigs import tiny_classifier
from tinylm import save_model_dir, toy_examples  # noqa: E402

torch.set_num_threads(1)


def _random_deltas(sm, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sm.delta_parameters().values():
            p.copy_(torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama classifier base and a SpaRTA adapter trained on it."""
    root = tmp_path_factory.mktemp("llama")
    base = tiny_classifier(seed=4)
    base.save_pretrained(root / "base")
    sm = get_sparta_model(base, SpartaConfig(density=0.1, target_modules=["q_proj", "down_proj"]))
    _random_deltas(sm)
    sm.save_pretrained(root / "adapter")
    return root


def test_an_adapter_against_another_architecture_is_refused(llama, tmp_path):
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128)).save_pretrained(
        tmp_path / "gpt2"
    )
    with pytest.raises(
        SpartaError,
        match=r"gpt2 is not the base model of the adapter .*adapter: the base model has "
        r"no parameter 'model.layers.0.self_attn.q_proj.weight'",
    ):
        delta_ranks(tmp_path / "gpt2", llama / "adapter")


def test_an_adapter_against_other_weights_or_shapes_is_refused(llama, tmp_path):
    tiny_classifier(seed=5).save_pretrained(tmp_path / "other")
    with pytest.raises(SpartaError, match=r"is not the base model .*: base model mismatch: the weights of"):
        delta_ranks(tmp_path / "other", llama / "adapter")
    tiny_classifier(seed=4, intermediate_size=48).save_pretrained(tmp_path / "narrow")
    with pytest.raises(
        SpartaError, match=r"has shape \(48, 32\) but the adapter was trained on shape \(64, 32\)"
    ):
        delta_ranks(tmp_path / "narrow", llama / "adapter")
    # a bf16 copy of the right base is the same base (the fingerprint rounds to bf16)
    tiny_classifier(seed=4).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert delta_ranks(tmp_path / "bf16", llama / "adapter").records


def test_encoder_base_against_its_adapter_and_its_export(tmp_path):
    """BertModel saves encoder.layer.0...; its classifier (and so the adapter and the export) bert.encoder...."""
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "base")
    clf = BertForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=2)
    sm = get_sparta_model(clf, SpartaConfig(density=0.05, target_modules=["query", "value"]))
    _random_deltas(sm)
    sm.save_pretrained(tmp_path / "adapter")
    sparse = {r.name: r.rank for r in delta_ranks(tmp_path / "base", tmp_path / "adapter").records}
    assert len(sparse) == 4 and all(n.startswith("bert.encoder.layer.") for n in sparse)
    sm.merge_and_unload().save_pretrained(tmp_path / "export")
    full = full_model_ranks(tmp_path / "base", tmp_path / "export")
    ranks = {r.name: r.rank for r in full.records}
    assert {n: k for n, k in ranks.items() if k} == sparse  # the merged change is the sparse delta
    assert "bert.encoder.layer.0.attention.self.key.weight" in ranks  # unchanged matrices are matched too
    assert full.skipped["only in one model"] == 2  # the classifier head (weight, bias)


def test_match_names_up_to_one_prefix():
    base = ["embeddings.w", "encoder.layer.0.q.weight", "pooler.dense.weight"]
    assert match_names(["bert.encoder.layer.0.q.weight", "classifier.weight"], base) == {
        "bert.encoder.layer.0.q.weight": "encoder.layer.0.q.weight"
    }
    assert match_names(["encoder.layer.0.q.weight"], ["bert.encoder.layer.0.q.weight"]) == {
        "encoder.layer.0.q.weight": "bert.encoder.layer.0.q.weight"
    }
    assert match_names(["model.layers.0.w"], ["model.layers.0.w", "layers.0.w"]) == {
        "model.layers.0.w": "model.layers.0.w"
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real `sparta train` outputs (sparta and full) on the tiny base model, and a head-only run.json."""
    from sparta.train import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    model = save_model_dir(root / "model", chat=False, tied=False)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in toy_examples(48, 3)))
    for method in ("sparta", "full"):
        cfg = TrainConfig(
            task="custom",
            train_file=str(data),
            model=str(model),
            method=method,
            output=str(root / method),
            max_steps=2,
            batch_size=8,
            lr=0.05,
            density=0.2,
            zero_shot=False,
            progress=False,
            device="cpu",
        )
        train(cfg)
    (root / "head").mkdir()
    (root / "head" / "run.json").write_text(json.dumps({"method": "head", "model_path": str(model)}))
    return root


def test_run_directories_are_accepted(runs):
    model = runs / "model"
    named = delta_ranks(model, runs / "sparta")
    recorded = delta_ranks(None, runs / "sparta")  # the base from run.json
    assert named.source == recorded.source == "sparta" and named.records
    assert [(r.name, r.rank) for r in named.records] == [(r.name, r.rank) for r in recorded.records]
    assert recorded.base == str(model.resolve())
    full = delta_ranks(None, runs / "full")
    assert full.source == "full" and any(r.rank > 0 for r in full.records)
    assert full.finetuned == str(runs / "full" / "model")
    with pytest.raises(SpartaError, match="head-only run: no backbone weight changed"):
        delta_ranks(model, runs / "head")


def test_cli_takes_a_run_dir_alone(runs, monkeypatch, capsys):
    monkeypatch.setattr(sparta.cli, "COMMAND_MODULES", ["rank"])
    assert sparta.cli.main(["rank", str(runs / "sparta"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "sparta"
    assert sparta.cli.main(["rank", "a", "b", "c"]) == 2
    err = capsys.readouterr().err
    assert "takes [BASE] FINETUNED" in err and len(err.strip().splitlines()) == 1
