"""`sparta train` on a language-modelling task: the one training loop with the SFT objective (tinysft.py's toy
prompt/completion task as a custom task, rendered by its chat template, the tiny tied-embedding instruct Llama):
outputs of the same shape as a
classification run, the SFT settings in run.json, bitwise resume, early stopping, generation metrics, the
default rate, gradient checkpointing, and the step loss averaged over target tokens exactly."""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sparta.errors import SpartaError
from sparta.methods import get_method
from sparta.objectives import LanguageModelling
from sparta.train import TrainConfig, train
from sparta.train.distributed import Runtime
from sparta.train.loop import step_loss_and_backward
from tinylm import assert_same_run, run_launch
from tinysft import random_lm_data, tiny_lm, write_toy_sft_files

LM = LanguageModelling()


@pytest.fixture(scope="module")
def toy_sft_files(tmp_path_factory) -> dict[str, str]:
    return write_toy_sft_files(tmp_path_factory.mktemp("toy-sft"))


@pytest.fixture
def sft_config(toy_sft_files, tied_instruct_model_dir, tmp_path):
    def make(**overrides) -> TrainConfig:
        files = {f"{split}_file": path for split, path in toy_sft_files.items()}
        values = dict(
            task="custom",
            objective="language-modelling",
            **files,
            model=str(tied_instruct_model_dir),
            output=str(tmp_path / "run"),
            batch_size=8,
            max_steps=6,
            eval_every=3,
            lr=1e-2,
            log_every=1,
            progress=False,
            device="cpu",
        )
        return TrainConfig(**(values | overrides))

    return make


def _files(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_an_sft_run_writes_what_a_classification_run_writes(sft_config, toy_config, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sparta"):
        sft = train(sft_config(method="lora", lm_head="train"))
    classification = train(toy_config(max_steps=2, output=str(tmp_path / "cls")))
    assert set(sft) == set(classification) and sft["objective"] == "language-modelling"
    assert set(sft["metrics"]) == {"dev", "test"} and set(sft["metrics"]["test"]) == {"loss"}
    assert set(sft["zero_shot"]["dev"]) == {"loss"} and sft["head_init"] == {"kind": "none"}
    assert sft["history"][-1]["train_loss"] < sft["history"][0]["train_loss"]
    assert sft["metrics"]["test"]["loss"] < sft["zero_shot"]["test"]["loss"]
    out = Path(sft["adapter_path"]).parent
    info = json.loads((out / "run.json").read_text())
    assert (info["objective"], info["loss_on"], info["lm_head"], info["lm_head_untied"]) == (
        "language-modelling",
        "assistant",
        "train",
        True,
    )
    assert info["num_labels"] == 0 and info["adapter"] == "adapter"
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 7)) and rows[2]["dev_loss"]
    assert any(
        "target tokens" in r.getMessage() and r.getMessage().startswith("data: train 48 examples")
        for r in caplog.records
    )


class Crash(Exception):
    pass


@pytest.mark.parametrize(("method", "lm_head"), [("sparta", "sparse"), ("lora", "frozen")])
def test_an_interrupted_sft_run_resumes_bitwise(sft_config, tmp_path, method, lm_head):
    extra = dict(method=method, lm_head=lm_head, max_steps=6, eval_every=2)
    a = train(sft_config(**extra, output=str(tmp_path / "A")))

    def crash(step: int) -> None:
        if step == 3:
            raise Crash

    cfg = sft_config(**extra, save_every=2, output=str(tmp_path / "B"))
    with pytest.raises(Crash):
        train(cfg, on_step=crash)
    cfg.resume = True
    b = train(cfg)
    assert b["resumed_from_step"] == 2
    assert (b["metrics"], b["history"], b["zero_shot"]) == (a["metrics"], a["history"], a["zero_shot"])
    assert _files(tmp_path / "B" / "adapter") == _files(tmp_path / "A" / "adapter")


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(sft_config, tmp_path, engine):
    """DDP (accelerate, 2 CPU processes on gloo) and FSDP2 (torchrun) on SFT, the LM head trained: each rank's
    micro-batch holds a different number of target tokens, and the step is still the mean over all of them, so
    the losses match one process with the whole batch."""
    extra = dict(max_steps=4, eval_every=2, zero_shot=False, lm_head="train")
    one = train(sft_config(batch_size=16, output=str(tmp_path / "one"), **extra))
    cfg = sft_config(batch_size=8, output=str(tmp_path / "two"), **extra)
    worker = [str(Path(__file__).with_name("sft_train_worker.py")), json.dumps(cfg.to_dict()), engine]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    if engine == "ddp":
        launch = [
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            port,
        ]
    else:
        launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    proc = run_launch(
        [sys.executable, *launch, *worker], env=env, capture_output=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["processes"] == 2 and one["history"][0]["train_loss"] != one["history"][-1]["train_loss"]
    assert_same_run(one, two)


def test_sft_early_stopping_restores_the_lowest_dev_loss(sft_config):
    result = train(sft_config(lr=3.0, method="full", max_steps=12, eval_every=1, early_stopping_patience=1))
    dev = [h["dev_loss"] for h in result["history"] if "dev_loss" in h]
    assert result["stopped_early"] and result["steps"] < 12
    assert result["restored_best"] and result["metrics"]["dev"]["loss"] == min(dev)


def test_generation_metrics_in_the_zero_shot_and_final_metrics(sft_config):
    result = train(
        sft_config(method="full", lr=1e-2, eval_generate=True, max_new_tokens=3, max_eval_samples=6)
    )
    for metrics in (result["zero_shot"], result["metrics"]):
        assert set(metrics["dev"]) == set(metrics["test"]) == {"loss", "exact_match"}
        assert 0.0 <= metrics["test"]["exact_match"] <= 1.0
    assert all(set(h) <= {"step", "train_loss", "dev_loss"} for h in result["history"])  # dev during training
    assert result["metrics"]["dev"]["loss"] == result["history"][-1]["dev_loss"]


def test_sft_without_a_rate_takes_the_language_modelling_default(sft_config, tmp_path):
    """SpaRTA's measured SFT rate at the LoRA budget's density (3.47%), the lower one below 2%."""
    measured = sft_config(lr=None, max_steps=1, density=0.0347, output=str(tmp_path / "measured"))
    assert train(measured)["config"]["lr"] == 1e-2
    assert train(sft_config(lr=None, max_steps=1, density=0.005))["config"]["lr"] == 3e-3


def test_gradient_checkpointing_trains_the_same(sft_config, tmp_path):
    plain = train(sft_config(output=str(tmp_path / "plain")))
    checkpointed = train(sft_config(output=str(tmp_path / "ckpt"), gradient_checkpointing=True))
    for h1, h2 in zip(plain["history"], checkpointed["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
    assert checkpointed["metrics"]["test"]["loss"] == pytest.approx(
        plain["metrics"]["test"]["loss"], rel=1e-5
    )


def test_sft_settings_are_checked(sft_config, toy_config, tmp_path):
    with pytest.raises(SpartaError, match="head method"):
        train(sft_config(method="head"))
    with pytest.raises(SpartaError, match="head method"):
        TrainConfig(objective="language-modelling", method="head")
    with pytest.raises(SpartaError, match="lm-head sparse"):
        TrainConfig(method="lora", lm_head="sparse")
    with pytest.raises(SpartaError, match="unknown lm_head"):
        TrainConfig(lm_head="tied")
    with pytest.raises(SpartaError, match="--lm-head apply to language-modelling"):
        train(toy_config(lm_head="train", output=str(tmp_path / "never")))
    with pytest.raises(SpartaError, match="--max-new-tokens, --loss-on apply to language-modelling"):
        train(toy_config(max_new_tokens=8, loss_on="all", output=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()  # refused before the run dir is made
    cfg = TrainConfig(
        objective="language-modelling",
        loss_on="all",
        lm_head="train",
        gradient_checkpointing=True,
        eval_generate=False,
        max_new_tokens=32,
        keep_calculator=True,
    )
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert "--gradient-checkpointing" in cfg.to_argv() and "--keep-calculator" in cfg.to_argv()


# -- the step's loss: the mean over its target tokens, however they are split ---------------------------------------
class _Ranks(Runtime):
    """Rank `rank` of a pretend 2-process run: DDP's gradient averaging is done by the test, sums are local."""

    def no_sync(self, model, skip):  # noqa: ANN001, ANN201
        import contextlib

        return contextlib.nullcontext()

    def sum(self, value: float) -> float:
        return value


def _step_grads(chunk, rt, batch_size) -> dict[str, torch.Tensor]:
    net = get_method("sparta").apply(
        tiny_lm("llama-untied"),
        SimpleNamespace(density=0.3, targets=None, seed=0, index_seed=None, lm_head="frozen"),
        LM,
    )
    cfg = SimpleNamespace(batch_size=batch_size, padding_side="right")
    setup = SimpleNamespace(
        enc={"train": random_lm_data(8, seed=9)},
        objective=LM,
        precision=None,
        tokenizer=SimpleNamespace(pad_token_id=0),
        device=torch.device("cpu"),
    )
    step_loss_and_backward(net, chunk, setup, cfg, rt)
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}


def test_the_step_loss_is_the_mean_over_its_target_tokens():
    """One batch of 8, two micro-batches of 4 (uneven token counts), and two pretend DDP ranks with 2 micro-batches
    of 2 each give the gradient of (summed NLL of the 8 examples) / (their target tokens)."""
    one = _step_grads([list(range(8))], Runtime.single(), 8)
    accumulated = _step_grads([[0, 1, 2, 3], [4, 5, 6, 7]], Runtime.single(), 4)
    ranks = [_step_grads([[0, 1, 2, 3], [4, 5, 6, 7]], _Ranks(r, 2, SimpleNamespace()), 2) for r in (0, 1)]
    data = random_lm_data(8, seed=9)
    assert len({LM.units(data, [0, 1, 2, 3]), LM.units(data, [4, 5, 6, 7])}) == 2  # unequal micro-batches
    for name, g in one.items():
        torch.testing.assert_close(accumulated[name], g, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(
            (ranks[0][name] + ranks[1][name]) / 2, g, rtol=1e-5, atol=1e-8
        )  # DDP: mean


def test_a_checkpoint_from_before_the_sft_settings_resumes(toy_config, tmp_path):
    """Checkpoints written before a setting existed resume: the missing setting counts at its default."""
    cfg = toy_config(max_steps=4, save_every=2, eval_every=2)

    def crash(step: int) -> None:
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, on_step=crash)
    state_file = Path(cfg.output) / "checkpoint-2" / "state.json"
    state = json.loads(state_file.read_text())
    new = (
        "objective",
        "loss_on",
        "lm_head",
        "gradient_checkpointing",
        "eval_generate",
        "max_new_tokens",
        "keep_calculator",
    )
    state["config"] = {k: v for k, v in state["config"].items() if k not in new}
    state_file.write_text(json.dumps(state))
    cfg.resume = True
    assert train(cfg)["resumed_from_step"] == 2
