"""Delta-rank analysis (Appendix A): full fine-tunes with known low-rank updates, sharding, LoRA, SpaRTA."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sparta.analysis.rank import delta_ranks, format_layers, full_model_ranks, rank_of, singular_values
from sparta.errors import SpartaError
from tinyconfigs import tiny_causal_lm, tiny_classifier

# (layer, matrix) -> rank of the update added to it; every other weight is unchanged.
UPDATES = {
    (0, "self_attn.q_proj"): 3,
    (1, "self_attn.q_proj"): 3,
    (2, "self_attn.q_proj"): 3,
    (3, "self_attn.q_proj"): 5,
    (1, "self_attn.o_proj"): 1,
    (3, "self_attn.o_proj"): 1,
    (2, "mlp.down_proj"): 32,  # full rank (32 x 64)
}


def low_rank(rows: int, cols: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, k, generator=gen) @ torch.randn(k, cols, generator=gen) * 0.1


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny 4-layer Llama and a copy with the known updates, both saved; also a sharded copy of the latter."""
    root = tmp_path_factory.mktemp("models")
    model = tiny_causal_lm(num_hidden_layers=4)
    model.save_pretrained(root / "base")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for (layer, matrix), k in UPDATES.items():
            w = model.get_parameter(f"model.layers.{layer}.{matrix}.weight")
            w += low_rank(*w.shape, k, gen)
    model.save_pretrained(root / "ft")
    model.save_pretrained(root / "ft_sharded", max_shard_size="20KB")
    return root


def test_known_ranks_found_exactly(pair):
    report = full_model_ranks(pair / "base", pair / "ft")
    ranks = {r.name: r.rank for r in report.records}
    for (layer, matrix), k in UPDATES.items():
        assert ranks.pop(f"model.layers.{layer}.{matrix}.weight") == k
    assert ranks and set(ranks.values()) == {0}  # embeddings, LM head, other projections: unchanged
    down = next(r for r in report.records if r.name == "model.layers.2.mlp.down_proj.weight")
    assert down.shape == (32, 64) and down.deficiency == 0


def test_groups_like_the_paper(pair):
    groups = full_model_ranks(pair / "base", pair / "ft").groups()
    rows = {(g["matrix"], g["rank"]): g for g in groups}
    assert rows[("self_attn.q_proj", 3)]["layers"] == "0-2"
    assert rows[("self_attn.q_proj", 5)]["layers"] == "3"
    assert rows[("self_attn.o_proj", 1)]["layers"] == "1,3"
    assert rows[("self_attn.o_proj", 0)]["layers"] == "0,2"
    assert rows[("self_attn.o_proj", 1)]["deficiency"] == 31
    assert rows[("self_attn.k_proj", 0)]["layers"] == "0-3" and rows[("self_attn.k_proj", 0)]["dims"] == [
        16,
        32,
    ]
    assert rows[("model.embed_tokens", 0)]["layers"] == "-"
    assert rows[("mlp.down_proj", 32)]["layers"] == "2"
    # Within a matrix, rows go by increasing rank, as in Tables 7-8.
    q = [g["rank"] for g in groups if g["matrix"] == "self_attn.q_proj"]
    assert q == [3, 5]
    o = [g["rank"] for g in groups if g["matrix"] == "self_attn.o_proj"]
    assert o == [0, 1]


def test_sharded_safetensors_give_the_same_ranks(pair):
    assert (pair / "ft_sharded" / "model.safetensors.index.json").is_file()
    assert len(list((pair / "ft_sharded").glob("*.safetensors"))) > 1
    plain = full_model_ranks(pair / "base", pair / "ft")
    sharded = full_model_ranks(pair / "base", pair / "ft_sharded")
    assert [(r.name, r.rank) for r in sharded.records] == [(r.name, r.rank) for r in plain.records]


def test_format_layers():
    assert format_layers([*range(12), *range(13, 30)]) == "0-11,13-29"
    # The paper's Table 7 row for gemma-2b-it's q_proj.
    assert format_layers([1, 3, 4, 5, 7, 8, 10, 11, 12, 13, 16, 17]) == "1,3-5,7,8,10-13,16,17"
    assert format_layers([]) == "-"


def test_tolerance_rules_on_bf16_storage(tmp_path):
    """A rank-2 change stored in bf16: rounding noise makes the stored delta nearly full rank, the 'storage'
    rule (singular values beyond what bf16 rounding of W_ft can explain) recovers the 2."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 48, generator=gen)
    (tmp_path / "b").mkdir()
    (tmp_path / "f").mkdir()
    save_file({"layers.0.proj.weight": w.bfloat16()}, tmp_path / "b" / "model.safetensors")
    ft = (w.bfloat16().float() + low_rank(64, 48, 2, gen) * 10).bfloat16()
    save_file({"layers.0.proj.weight": ft}, tmp_path / "f" / "model.safetensors")
    plain = full_model_ranks(tmp_path / "b", tmp_path / "f").records[0]
    storage = full_model_ranks(tmp_path / "b", tmp_path / "f", rule="storage").records[0]
    assert storage.rank == 2
    assert plain.rank > 2 and plain.dtype == "BF16"
    explicit = full_model_ranks(tmp_path / "b", tmp_path / "f", tol=0.5).records[0]
    assert explicit.rank <= 2 and explicit.threshold == pytest.approx(0.5 * explicit.sigma_max)


def lora_setup(tmp_path, rank_pattern=None):
    from peft import LoraConfig, get_peft_model

    base = tiny_causal_lm(seed=2)
    base.save_pretrained(tmp_path / "base")
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,  # random B: a non-zero change
        rank_pattern=rank_pattern or {},
    )
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "lora")
    return peft_model


def test_lora_adapter_ranks_at_most_r(tmp_path):
    peft_model = lora_setup(tmp_path, rank_pattern={"v_proj": 2})
    report = delta_ranks(tmp_path / "base", tmp_path / "lora")
    assert report.source == "lora"
    assert len(report.records) == 2 * 3
    for rec in report.records:
        assert rec.rank <= rec.bound
        assert rec.rank == (2 if "v_proj" in rec.name else 4)
        assert rec.bound == (2 if "v_proj" in rec.name else 4)
    down = next(r for r in report.records if "down_proj" in r.name)
    assert down.shape == (32, 64)
    # The merged model's change has the same ranks (the 'storage' rule absorbs fp32 rounding of W + BA).
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    merged = full_model_ranks(tmp_path / "base", tmp_path / "merged", rule="storage")
    ranks = {r.name: r.rank for r in merged.records if r.rank}
    assert ranks == {r.name: r.rank for r in report.records}


def test_sparta_adapter_ranks(tmp_path):
    from sparta import SpartaConfig, get_sparta_model

    base = tiny_classifier(seed=4)
    base.save_pretrained(tmp_path / "base")
    sm = get_sparta_model(base, SpartaConfig(density=0.05, target_modules=["q_proj", "up_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sm.delta_parameters().values():
            p.copy_(torch.randn(p.shape, generator=gen))
    sm.save_pretrained(tmp_path / "adapter")
    report = delta_ranks(tmp_path / "base", tmp_path / "adapter")
    assert report.source == "sparta"
    indices, deltas = sm.delta_indices(), sm.delta_parameters()
    assert {r.name for r in report.records} == set(deltas)
    for rec in report.records:
        dense = torch.zeros(rec.shape).view(-1)
        dense[indices[rec.name]] = deltas[rec.name].detach()
        assert rec.rank == torch.linalg.matrix_rank(dense.view(rec.shape).double()).item()
        assert 0 < rec.rank <= min(rec.shape)


def test_json_and_table(pair):
    report = full_model_ranks(pair / "base", pair / "ft")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["groups"] and data["tolerance"].startswith("rank = #singular values")
    text = report.format()
    assert "0 (full rank)" in text and "self_attn.q_proj" in text and "0-2" in text


def test_errors(tmp_path, pair):
    with pytest.raises(SpartaError, match="does not exist"):
        delta_ranks(tmp_path / "missing", pair / "ft")
    with pytest.raises(SpartaError, match="does not exist"):
        delta_ranks(pair / "base", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpartaError, match="no \\*.safetensors"):
        delta_ranks(pair / "base", tmp_path / "empty")
    (tmp_path / "other").mkdir()
    save_file({"encoder.w": torch.zeros(3, 3)}, tmp_path / "other" / "model.safetensors")
    with pytest.raises(SpartaError, match="no 2-D weight"):
        delta_ranks(pair / "base", tmp_path / "other")
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    with pytest.raises(SpartaError, match="neither"):
        delta_ranks(pair / "base", tmp_path / "ia3")
    with pytest.raises(SpartaError, match="tol"):
        delta_ranks(pair / "base", pair / "ft", tol=-1)


@pytest.mark.parametrize("shape, k", [((200, 150), 37), ((90, 300), 90), ((120, 120), 0)])
def test_gram_and_svd_routes_agree(shape, k):
    gen = torch.Generator().manual_seed(k)
    delta = low_rank(*shape, k, gen) if k else torch.zeros(shape)
    assert rank_of(delta)[0] == k == torch.linalg.matrix_rank(delta.double(), rtol=max(shape) * 1.2e-7).item()
    gram, svd = singular_values(delta, "gram"), singular_values(delta, "svd")
    assert torch.allclose(gram[:k], svd[:k], rtol=1e-6)
