"""Merging SFT (language-modelling) SpaRTA adapters into one causal LM: weighted deltas added (or combined by another
rule), trained LM heads' changes added, the interaction report, opening and generating; mixing with classifier
adapters is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from sparta import SpartaConfig, SpartaError, get_sparta_model
from sparta.adapter import iter_dense_deltas
from sparta.adapter.io import read_heads, read_sparse_deltas
from sparta.merging import Strategy, merge_adapters, merge_sparse, refit_heads
from sparta.runs import generate_texts, open_model
from tinysftruns import write_sft_run

torch.set_num_threads(1)

PROMPTS = ["the movie was good", "a very bad plot", "music"]


@pytest.fixture(scope="module")
def sft(tmp_path_factory, instruct_model_dir, tied_instruct_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sft-merge")
    return {
        "a": write_sft_run(root / "a", instruct_model_dir, seed=0, density=0.1),
        "b": write_sft_run(root / "b", instruct_model_dir, seed=1, density=0.1),
        "head-a": write_sft_run(root / "head-a", tied_instruct_model_dir, seed=2, lm_head="train"),
        "head-b": write_sft_run(root / "head-b", tied_instruct_model_dir, seed=3, lm_head="train"),
    }


def _dense(run: Path) -> dict[str, torch.Tensor]:
    return {name: d for name, _, d in iter_dense_deltas(run / "adapter")}


@pytest.mark.parametrize("weights", [None, [0.5, -1.0]])
def test_merged_causal_lm_is_base_plus_weighted_deltas(sft, instruct_model_dir, tmp_path, weights):
    doc = merge_adapters([sft["a"], sft["b"]], tmp_path / "m", weights=weights, names=["a", "b"])
    w = weights or [1.0, 1.0]
    assert doc["objective"] == "language-modelling" and [t["weight"] for t in doc["tasks"]] == w
    assert not (tmp_path / "m" / "heads").exists() and all("head_file" not in t for t in doc["tasks"])
    base = AutoModelForCausalLM.from_pretrained(str(instruct_model_dir)).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).state_dict()
    d1, d2 = _dense(sft["a"]), _dense(sft["b"])
    assert set(merged) == set(base)
    for name, w0 in base.items():
        expected = w0 + w[0] * d1[name] + w[1] * d2[name] if name in d1 else w0
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)
    (pair,) = doc["interactions"]
    overlap = sum(int(((d1[n] != 0) & (d2[n] != 0)).sum()) for n in d1)  # random deltas: never exactly 0
    assert (pair["a"], pair["b"], pair["overlap"]) == ("a", "b", overlap)
    assert 0 < pair["overlap"] < pair["count_a"] and doc["warnings"] == []


def test_a_merge_with_one_weight_zero_generates_as_the_other_run(sft, tmp_path):
    merge_adapters([sft["a"], sft["b"]], tmp_path / "m", weights=[1.0, 0.0])
    merged = open_model(tmp_path / "m", device="cpu")
    assert merged.kind == "merged" and merged.causal_lm and merged.instruct
    single = open_model(sft["a"], device="cpu")
    assert generate_texts(merged, PROMPTS, max_new_tokens=10) == generate_texts(
        single, PROMPTS, max_new_tokens=10
    )
    generation = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert merged.tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    with pytest.raises(SpartaError, match="no task heads to re-fit"):
        refit_heads(tmp_path / "m", device="cpu")


def test_trained_lm_heads_add_their_changes_into_an_untied_head(sft, tied_instruct_model_dir, tmp_path):
    doc = merge_adapters([sft["head-a"], sft["head-b"]], tmp_path / "m", weights=[0.5, 2.0])
    assert [t["lm_head"] for t in doc["tasks"]] == ["train", "train"]
    base = AutoModelForCausalLM.from_pretrained(str(tied_instruct_model_dir))
    h0 = base.get_input_embeddings().weight.detach()
    ha, hb = (read_heads(sft[k] / "adapter")["lm_head.weight"] for k in ("head-a", "head-b"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    assert merged.config.tie_word_embeddings is False
    torch.testing.assert_close(
        merged.lm_head.weight, h0 + 0.5 * (ha - h0) + 2.0 * (hb - h0), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        merged.get_input_embeddings().weight, h0, rtol=0, atol=0
    )  # embedding untouched


def test_sft_and_classifier_adapters_do_not_merge(sft, instruct_model_dir, tmp_path):
    classifier = AutoModelForSequenceClassification.from_pretrained(str(instruct_model_dir), num_labels=2)
    get_sparta_model(classifier, SpartaConfig(density=0.1, seed=5)).save_pretrained(tmp_path / "classifier")
    with pytest.raises(SpartaError, match="cannot merge classification adapters with language-modelling"):
        merge_adapters([sft["a"], tmp_path / "classifier"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "strategy", [Strategy("ties", top_k=0.5), Strategy("dare", drop=0.3, seed=1)], ids=str
)
def test_sft_merges_apply_the_rule_to_deltas_and_the_weighted_sum_to_trained_heads(
    sft, tied_instruct_model_dir, tmp_path, strategy
):
    pair, weights = [sft["head-a"], sft["head-b"]], [0.5, 2.0]
    doc = merge_adapters(pair, tmp_path / "m", weights=weights, strategy=strategy)
    assert doc["strategy"] == strategy.describe() and set(doc["survival"]["tasks"]) == {"head-a", "head-b"}
    expected = merge_sparse([read_sparse_deltas(p / "adapter") for p in pair], weights, strategy)
    assert list(doc["survival"]["tasks"].values()) == pytest.approx(expected.survival)
    base = AutoModelForCausalLM.from_pretrained(str(tied_instruct_model_dir)).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    state = merged.state_dict()
    for name, (union, values) in expected.deltas.items():
        want = base[name].clone()
        want.view(-1).index_add_(0, union, values)
        assert torch.equal(state[name], want), name
    h0 = base["model.embed_tokens.weight"]
    ha, hb = (read_heads(p / "adapter")["lm_head.weight"] for p in pair)
    torch.testing.assert_close(
        merged.lm_head.weight, h0 + 0.5 * (ha - h0) + 2.0 * (hb - h0), rtol=0, atol=1e-5
    )
