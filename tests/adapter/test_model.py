import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from sparta import SpartaConfig, SpartaError, get_sparta_model
from sparta.adapter.layer import SpartaLinear
from sparta.adapter.reference import ReferenceSparta
from tinyconfigs import mistral_7b_config, tiny_causal_lm, tiny_classifier


def _names(model, cls=SpartaLinear):
    return [n for n, m in model.named_modules() if isinstance(m, cls)]


def test_all_linear_targets_block_linears_only():
    sm = get_sparta_model(tiny_classifier(), SpartaConfig(density=0.1))
    names = _names(sm.base_model)
    assert len(names) == 2 * 7  # q k v o gate up down per block
    assert all(".layers." in n for n in names)
    trainable = [n for n, p in sm.named_parameters() if p.requires_grad]
    assert all(n.endswith("sparta_delta") or ".score." in n for n in trainable)
    assert any(".score." in n for n in trainable)
    assert not sm.base_model.model.embed_tokens.weight.requires_grad


def test_suffix_targets_and_density_overrides():
    config = SpartaConfig(density=0.1, target_modules=["v_proj", "o_proj"], density_overrides={"o_proj": 0.5})
    sm = get_sparta_model(tiny_classifier(), config)
    assert sorted({n.rsplit(".", 1)[1] for n in _names(sm.base_model)}) == ["o_proj", "v_proj"]
    o = sm.base_model.model.layers[0].self_attn.o_proj
    v = sm.base_model.model.layers[0].self_attn.v_proj
    assert o.sparta_delta.numel() / o.weight.numel() > 0.3 > v.sparta_delta.numel() / v.weight.numel()


def test_regex_targets():
    sm = get_sparta_model(
        tiny_classifier(), SpartaConfig(density=0.1, target_modules=r".*layers\.1\.mlp\..*")
    )
    assert _names(sm.base_model) == [
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.1.mlp.down_proj",
    ]


def test_unmatched_targets_name_what_exists():
    with pytest.raises(SpartaError, match="match no Linear module.*q_proj"):
        get_sparta_model(tiny_classifier(), SpartaConfig(density=0.1, target_modules=["qkv"]))


@pytest.mark.parametrize("density", [0.0, 1.5, -0.1, "x"])
def test_bad_density_is_a_clear_error(density):
    with pytest.raises(SpartaError, match="density"):
        SpartaConfig(density=density)


def test_biases_and_norms_are_adapted_sparsely():
    model = tiny_causal_lm(attention_bias=True)
    sm = get_sparta_model(
        model, SpartaConfig(density=0.5, target_modules=["q_proj"], include_biases=True, include_norms=True)
    )
    names = [t.name for t in sm.targets]
    assert "model.layers.0.self_attn.q_proj.bias" in names
    assert "model.layers.0.input_layernorm.weight" in names
    ids = torch.randint(1, 128, (2, 6))
    sm(input_ids=ids, labels=ids).loss.backward()
    deltas = sm.delta_parameters()
    assert deltas["model.layers.0.input_layernorm.weight"].grad.abs().sum() > 0
    assert deltas["model.layers.0.self_attn.q_proj.bias"].grad.abs().sum() > 0


def _loss_fn(batch):
    return lambda model: model(**batch).loss


@pytest.mark.parametrize("dtype", [torch.float32])
def test_fast_path_matches_algorithm_1_over_adam_steps(batch, dtype):
    config = SpartaConfig(density=0.2, target_modules="all-linear")
    fast = get_sparta_model(tiny_classifier(dtype=dtype), config)
    ref_model = tiny_classifier(dtype=dtype)
    ref = ReferenceSparta(
        ref_model, {n: i.clone() for n, i in fast.delta_indices().items()}, ["score.weight"]
    )
    opt_fast = torch.optim.Adam([p for p in fast.parameters() if p.requires_grad], lr=1e-2)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        step = {
            "input_ids": torch.randint(1, 128, (4, 10), generator=g),
            "labels": torch.randint(0, 3, (4,), generator=g),
        }
        loss_fast = fast(**step).loss
        loss_fast.backward()
        loss_ref = ref.forward_backward(_loss_fn(step))
        torch.testing.assert_close(loss_fast.detach(), loss_ref, rtol=1e-4, atol=1e-5)
        for name, delta in fast.delta_parameters().items():
            torch.testing.assert_close(delta.grad, ref.deltas[name].grad, rtol=1e-3, atol=1e-6)
        opt_fast.step()
        opt_ref.step()
        opt_fast.zero_grad()
        opt_ref.zero_grad()
    for name, delta in fast.delta_parameters().items():
        torch.testing.assert_close(delta.detach(), ref.deltas[name].detach(), rtol=1e-3, atol=1e-5)
    assert any(d.abs().max() > 1e-3 for d in fast.delta_parameters().values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unload_restores_pretrained_weights_bitwise(batch, dtype):
    model = tiny_classifier(dtype=dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sm = get_sparta_model(model, SpartaConfig(density=0.3))
    opt = torch.optim.AdamW([p for p in sm.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(10):
        sm(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    sm.sync_weights()
    changed = sum(
        not torch.equal(before[n], p) for n, p in sm.base_model.named_parameters() if "sparta" not in n
    )
    assert changed > 0
    base = sm.unload()
    assert not _names(base)
    for name, p in base.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.requires_grad  # the model's own flags are back


def test_merge_and_unload_equals_adapter_outputs_and_is_plain(tmp_path, batch):
    sm = get_sparta_model(tiny_classifier(), SpartaConfig(density=0.3))
    opt = torch.optim.AdamW([p for p in sm.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(5):
        sm(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        adapted = sm(input_ids=batch["input_ids"]).logits
    merged = sm.merge_and_unload()
    assert not any("sparta" in n for n, _ in merged.named_parameters())
    assert not _names(merged)
    merged.save_pretrained(tmp_path)
    reloaded = LlamaForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=batch["input_ids"]).logits, adapted)


def test_disable_adapter_runs_the_base_model(batch):
    model = tiny_classifier()
    with torch.no_grad():
        base_logits = model(input_ids=batch["input_ids"]).logits
    sm = get_sparta_model(model, SpartaConfig(density=0.3))
    opt = torch.optim.AdamW([p for p in sm.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(3):
        sm(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        adapted = sm(input_ids=batch["input_ids"]).logits
        with sm.disable_adapter():
            disabled = sm(input_ids=batch["input_ids"]).logits
        again = sm(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(disabled, base_logits)
    assert not torch.allclose(adapted, base_logits)
    torch.testing.assert_close(again, adapted)


def test_gpt2_conv1d_layers_are_supported():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    sm = get_sparta_model(model, SpartaConfig(density=0.2, target_modules=["c_attn", "c_proj"]))
    ids = torch.randint(0, 64, (2, 8))
    sm(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in sm.delta_parameters().values())


def test_hf_trainer_trains_only_deltas_and_head(tmp_path):
    sm = get_sparta_model(tiny_classifier(), SpartaConfig(density=0.2))
    g = torch.Generator().manual_seed(0)
    data = [
        {"input_ids": torch.randint(1, 128, (8,), generator=g), "labels": torch.tensor(i % 3)}
        for i in range(16)
    ]
    before = {n: p.detach().clone() for n, p in sm.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
    )
    Trainer(model=sm, args=args, train_dataset=data).train()
    sm.sync_weights()
    after = dict(sm.named_parameters())
    assert not torch.equal(before["base_model.score.weight"], after["base_model.score.weight"])
    assert any(not torch.equal(before[n], p) for n, p in after.items() if n.endswith("sparta_delta"))
    embed = "base_model.model.embed_tokens.weight"
    assert torch.equal(before[embed], after[embed])


def test_meta_device_sizing_of_a_7b_config_is_quick_and_small():
    from transformers import MistralForCausalLM

    with torch.device("meta"):
        model = MistralForCausalLM(mistral_7b_config())
    sm = get_sparta_model(model, SpartaConfig(density=0.001))
    trainable, total = sm.get_nb_trainable_parameters()
    linear = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)
    assert abs(trainable - 0.001 * linear) < 5 * (0.001 * linear) ** 0.5 * 10
    assert total > 7_000_000_000
    assert all(p.device.type == "meta" for p in sm.delta_parameters().values())
