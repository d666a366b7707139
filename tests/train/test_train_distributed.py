"""Multi-process training (accelerate launch, DDP on CPU/gloo), bf16 autocast and a soak run (FSDP: test_train_fsdp)."""

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from sparta.train import train
from tinylm import assert_same_run, run_launch

REPO = Path(__file__).resolve().parents[2]
SPARTA = Path(sys.executable).parent / "sparta"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(cfg, tmp_path: Path) -> dict:
    """`accelerate launch --multi_gpu --num_processes 2 sparta train ...` (CPU-only: gloo, MULTI_CPU)."""
    argv = [
        "train",
        "--task",
        "custom",
        "--train-file",
        cfg.train_file,
        "--dev-file",
        cfg.dev_file,
        "--test-file",
        cfg.test_file,
        "--model",
        cfg.model,
        "--output",
        cfg.output,
        "--method",
        cfg.method,
        "--batch-size",
        str(cfg.batch_size),
        "--max-steps",
        str(cfg.max_steps),
        "--lr",
        str(cfg.lr),
        "--eval-every",
        str(cfg.eval_every),
        "--lora-dropout",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        "--log-every",
        "1",
        "--grad-accum",
        str(cfg.grad_accum),
    ]
    launch = [
        sys.executable,
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
        str(_free_port()),
        str(SPARTA),
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = run_launch(launch, env=env, capture_output=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads((Path(cfg.output) / "results.json").read_text())


def _two_vs_one(toy_config, tmp_path, **extra) -> tuple[dict, dict]:
    one = train(toy_config(batch_size=16, output=str(tmp_path / "one"), **extra))
    two = _launch_two(toy_config(batch_size=8, output=str(tmp_path / "two"), **extra), tmp_path)
    return one, two


def test_two_processes_match_one_with_the_same_global_batch(toy_config, tmp_path):
    """SpaRTA under DDP: the deltas' gradients are all-reduced, the lazy in-place merge keeps every rank's
    weights identical (the loop checks a SHA-256 of all parameters across ranks), and the loss history of
    2 processes x batch 8 equals 1 process x batch 16 within MULTI_PROCESS_REL_TOL."""
    one, two = _two_vs_one(toy_config, tmp_path, max_steps=6, eval_every=3, grad_accum=1, zero_shot=False)
    assert two["processes"] == 2 and one["processes"] == 1
    assert [h["step"] for h in two["history"]] == list(range(1, 7))
    assert_same_run(one, two)
    assert one["history"][0]["train_loss"] != one["history"][-1]["train_loss"]  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora", "head", "full"])
def test_two_processes_match_one_for_the_baselines(toy_config, tmp_path, method):
    one, two = _two_vs_one(
        toy_config,
        tmp_path,
        method=method,
        lr=1e-3,
        max_steps=4,
        eval_every=2,
        grad_accum=2,
        lora_dropout=0.0,
        zero_shot=False,
    )
    assert two["processes"] == 2
    assert_same_run(one, two, dev_and_test=False)


def test_bf16_autocast_gives_finite_delta_grads_close_to_fp32():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from sparta import SpartaConfig, get_sparta_model

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=2,
        pad_token_id=0,
    )
    model = get_sparta_model(LlamaForSequenceClassification(config), SpartaConfig(density=0.1, seed=0))
    ids = torch.randint(1, 64, (4, 12), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 1, 0])

    def grads(autocast: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        return {n: p.grad.clone() for n, p in model.delta_parameters().items()}

    fp32, bf16 = grads(False), grads(True)
    flat32 = torch.cat([g for g in fp32.values()])
    flat16 = torch.cat([g for g in bf16.values()])
    assert flat16.dtype == torch.float32 and torch.isfinite(flat16).all() and flat32.abs().sum() > 0
    cosine = torch.nn.functional.cosine_similarity(flat32, flat16, dim=0)
    assert cosine > 0.99 and (flat16 - flat32).norm() < 0.1 * flat32.norm()


def test_sparta_keeps_frozen_and_trainable_tensors_in_separate_parameters():
    """FSDP needs no parameter to be part frozen, part trainable (FSDP1 flat parameters with mixed requires_grad
    fail): a SpartaLinear's frozen weight and its trainable delta are distinct Parameters, and the wrapped
    original layer holds none meanwhile (so FSDP's sharded replacements leave no full copy behind)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from sparta import SpartaConfig, get_sparta_model
    from sparta.adapter.layer import SpartaLinear

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=2,
    )
    model = get_sparta_model(LlamaForSequenceClassification(config), SpartaConfig(density=0.1))
    layers = [m for m in model.modules() if isinstance(m, SpartaLinear)]
    assert layers
    for layer in layers:
        params = dict(layer.named_parameters(recurse=False))
        assert {n for n, p in params.items() if p.requires_grad} == {"sparta_delta"}
        assert not params["weight"].requires_grad
        assert not list(layer.base_layer.parameters())
    plain = model.unload()
    assert all(not isinstance(m, SpartaLinear) for m in plain.modules())
    assert plain.model.layers[0].self_attn.q_proj.weight is layers[0].weight


@pytest.mark.slow
def test_soak_2000_steps_without_memory_growth(toy_config, tmp_path):
    """RSS at the end of 2,000 steps stays within 5% of RSS after the 200-step warm-up."""
    psutil = pytest.importorskip("psutil")
    rss: dict[int, int] = {}

    def measure(step: int) -> None:
        if step in (200, 2000):
            rss[step] = psutil.Process().memory_info().rss

    cfg = toy_config(
        max_steps=2000,
        batch_size=4,
        log_every=100,
        eval_every=500,
        dev_file=None,
        test_file=None,
        zero_shot=False,
    )
    results = train(cfg, on_step=measure)  # the loop's per-step hook
    assert results["steps"] == 2000 and len(results["history"]) == 20
    assert rss[2000] <= 1.05 * rss[200], {k: v / 2**20 for k, v in rss.items()}
