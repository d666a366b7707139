"""TRL's SFTTrainer with a SpartaModel: it trains the deltas (fused LM head, gradient checkpointing on by default)
and its checkpoints hold the adapter only. Skipped where trl is not installed."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from sparta import SpartaConfig, get_sparta_model
from tinylm import make_causal_lm, make_tokenizer, toy_examples


def test_trl_sft_trainer_trains_and_saves_the_adapter(tmp_path):
    """TRL patches a fused LM head into the model's forward and turns gradient checkpointing on by default."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")

    tok = make_tokenizer(chat=False)
    sm = get_sparta_model(make_causal_lm(len(tok), tied=True), SpartaConfig(density=0.2, seed=0))
    data = datasets.Dataset.from_list([{"text": r["text"]} for r in toy_examples(16, 0)])
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="steps",
        save_steps=2,
        use_cpu=True,
        logging_strategy="no",
        max_length=32,
        disable_tqdm=True,
    )
    assert args.gradient_checkpointing
    trl.SFTTrainer(model=sm, args=args, train_dataset=data, processing_class=tok).train()
    assert all(float(d.detach().abs().sum()) > 0 for d in sm.delta_parameters().values())
    with safe_open(str(tmp_path / "checkpoint-2" / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(sm.adapter_state_names())
    sm.save_pretrained(tmp_path / "adapter")  # the adapter files proper, as after any training loop
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_trl_dpo_trainer_with_precomputed_reference_log_probs(tmp_path):
    """TRL 1.16's DPOTrainer loads a second reference model for a model that is not a PEFT model, unless
    `precompute_ref_log_probs=True`: then the reference log-probs come from the policy itself before training
    (a SpaRTA model with zero deltas is its base model) and no second model is ever made."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")

    tok = make_tokenizer(chat=False)
    sm = get_sparta_model(make_causal_lm(len(tok), tied=False), SpartaConfig(density=0.2, seed=0))
    rows = [{"prompt": r["text"], "chosen": " good .", "rejected": " bad !"} for r in toy_examples(8, 0)]
    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        max_length=32,
        disable_tqdm=True,
        precompute_ref_log_probs=True,
        gradient_checkpointing=False,
    )
    trainer = trl.DPOTrainer(
        model=sm, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok
    )
    assert trainer.ref_model is None
    trainer.train()
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)
    assert all(float(d.detach().abs().sum()) > 0 for d in sm.delta_parameters().values())
