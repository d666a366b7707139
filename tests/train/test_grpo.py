"""The GRPO recipe end to end on the tiny chat Llama: rollouts, rewards, metrics, resume, bad input, and the loss
and advantage arithmetic it is built from."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparta.cli import main as cli_main
from sparta.errors import SpartaError
from sparta.objectives.grpo import clipped_loss, group_advantages
from sparta.train import TrainConfig, train
from sparta.train import checkpoint as C

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


@pytest.fixture
def grpo_config(instruct_model_dir, tmp_path):
    """A TrainConfig for a few GRPO steps on the arithmetic task with the tiny instruct model."""

    def make(**overrides) -> TrainConfig:
        values = dict(
            task="arithmetic",
            model=str(instruct_model_dir),
            output=str(tmp_path / "run"),
            batch_size=2,
            num_generations=4,
            max_new_tokens=6,
            max_steps=4,
            lr=1e-2,
            warmup_ratio=0.0,  # every step updates (a warmup would start at lr 0)
            rewards=["tinyrewards:good", "length=0.1"],
            max_eval_samples=4,
            eval_every=2,
            log_every=1,
            progress=False,
            device="cpu",
        )
        values.update(overrides)
        return TrainConfig(**values)

    return make


def _log(path: Path) -> list[dict]:
    with open(path / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_grpo_run_logs_every_step(grpo_config, tmp_path):
    result = train(
        grpo_config(max_steps=8, kl_coef=0.05, eval_every=4, rewards=["tinyrewards:good", "length=0.01"])
    )
    rows = _log(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    for key in (
        "reward",
        "reward_tinyrewards:good",
        "share_length",
        "completion_length",
        "clip_fraction",
        "kl",
        "generation_s",
        "training_s",
        "sync_bytes",
        "model_bytes",
    ):
        assert all(r[key] != "" for r in rows), key
    assert [r["dev_accuracy"] != "" for r in rows] == [False, False, False, True] * 2
    # SpaRTA's update is its m deltas, 4 bytes each (positions known from the seed), far below the whole model
    assert result["sync_bytes_per_update"] == 4 * result["trainable_params"]
    assert {int(r["sync_bytes"]) for r in rows} == {result["sync_bytes_per_update"]}
    assert result["sync_bytes_per_update"] < result["model_bytes"] / 20
    assert float(rows[0]["kl"]) < float(rows[-1]["kl"])  # the policy moves away from the reference
    for r in rows:  # each reward's share: its weighted mean over the sum of their magnitudes
        good, length = float(r["reward_tinyrewards:good"]), 0.01 * float(r["reward_length"])
        assert float(r["share_length"]) == pytest.approx(length / (abs(good) + abs(length)), rel=1e-4)
        assert float(r["reward"]) == pytest.approx(good + length, rel=1e-4, abs=1e-6)
    assert result["steps"] == 8 and result["optimizer_steps"] == 8 and result["rollouts"] == 8 * 2 * 4
    assert set(result["metrics"]) == {"dev", "test"} and "accuracy" in result["metrics"]["test"]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["objective"] == "grpo" and info["rewards"] == ["tinyrewards:good", "length=0.01"]
    # each held-out prompt's greedy verdict and length, before and after training (for `sparta compare`)
    for name, metrics in (
        ("test", result["metrics"]["test"]),
        ("zero-shot.test", result["zero_shot"]["test"]),
    ):
        records = [json.loads(line) for line in (tmp_path / "run" / "examples" / f"{name}.jsonl").open()]
        n = len(records)
        assert sum(r["correct"] for r in records) / n == pytest.approx(metrics["accuracy"])
        assert sum(r["completion_length"] for r in records) / n == pytest.approx(metrics["completion_length"])


def test_one_update_raises_the_better_completion_and_lowers_the_worse(instruct_model_dir):
    """The clipped policy-gradient loss through the real chunked LM head and SpaRTA layers: one SGD step on two
    completions with advantages +1 and -1 moves their log-probs apart."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparta.adapter.config import SpartaConfig
    from sparta.adapter.model import get_sparta_model
    from sparta.objectives.grpo import completion_logps

    tok = AutoTokenizer.from_pretrained(instruct_model_dir)
    net = get_sparta_model(
        AutoModelForCausalLM.from_pretrained(instruct_model_dir), SpartaConfig(density=0.2)
    )
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts, completions = [ids("the movie was"), ids("the movie was")], [ids("good good"), ids("bad bad")]
    before = completion_logps(net, prompts, completions, tok.pad_token_id, "cpu").detach()
    logps = completion_logps(net, prompts, completions, tok.pad_token_id, "cpu")
    terms = clipped_loss(logps, logps.detach(), torch.tensor([1.0, 1.0, -1.0, -1.0]), 0.2)
    assert not terms.clipped.any() and terms.kl is None
    terms.loss.sum().backward()
    torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05).step()
    after = completion_logps(net, prompts, completions, tok.pad_token_id, "cpu").detach()
    assert (after[:2] > before[:2]).all() and (after[2:] < before[2:]).all()


def test_group_advantages_grpo_and_dr_grpo():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    std = (4 * 0.25 / 3) ** 0.5  # unbiased std of (1, 0, 0, 1)
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4])
    assert torch.allclose(group_advantages(rewards, scale=False), expected)
    scaled = group_advantages(rewards)
    assert (
        torch.allclose(scaled[0], expected[0] / (std + 1e-4)) and (scaled[1] == 0).all()
    )  # equal rewards: 0


def test_clipped_loss_clips_the_ratio_and_adds_the_kl_estimate():
    old = torch.zeros(4)
    logps = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.5])).requires_grad_()
    advantages = torch.tensor([1.0, -1.0, 1.0, 1.0])
    terms = clipped_loss(logps, old, advantages, 0.2)
    # ratio 1.5 with A > 0 and 0.5 with A < 0 are clipped (no gradient); 1.1 is inside; 0.5 with A > 0 is not
    assert terms.clipped.tolist() == [True, True, False, False]
    assert torch.allclose(terms.loss.detach(), torch.tensor([-1.2, 0.8, -1.1, -0.5]))
    terms.loss.sum().backward()
    assert logps.grad[:2].tolist() == [0.0, 0.0] and torch.allclose(
        logps.grad[2:], torch.tensor([-1.1, -0.5])
    )
    reference = torch.log(torch.tensor([1.5, 1.0, 1.1, 1.0]))
    with_kl = clipped_loss(logps.detach(), old, advantages, 0.2, reference, kl_coef=0.5)
    kl = torch.exp(reference - logps.detach()) - (reference - logps.detach()) - 1  # k3, zero where equal
    assert with_kl.kl[0] == 0 and with_kl.kl[1] > 0
    assert torch.allclose(with_kl.loss, terms.loss.detach() + 0.5 * kl)


def test_resume_after_kill_is_bitwise_identical(grpo_config, tmp_path):
    """Run A: 5 steps. Run B: --save-every 2, killed (os._exit(137), as kill -9) after step 3, then resumed: the
    sampling, the rewards and the adapter are bitwise A's (num_iterations 2 and the KL term exercise every path)."""
    extra = dict(max_steps=5, num_iterations=2, kl_coef=0.1, eval_every=5)
    a = train(grpo_config(**extra, output=str(tmp_path / "A")))
    cfg = grpo_config(**extra, save_every=2, output=str(tmp_path / "B"))
    code = (
        "import json, os, sys; from sparta.train import TrainConfig, train; "
        "train(TrainConfig(**json.loads(sys.argv[1])), on_step=lambda s: os._exit(137) if s == 3 else None)"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(TESTS)]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg.to_dict())], env=env, capture_output=True, cwd=REPO
    )
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]
    assert [p.name for p in C.list_checkpoints(tmp_path / "B")] == ["checkpoint-2"]
    cfg.resume = True
    b = train(cfg)
    assert b["resumed_from_step"] == 2
    assert b["history"] == a["history"] and b["metrics"] == a["metrics"] and b["zero_shot"] == a["zero_shot"]
    assert _files(tmp_path / "B" / "adapter") == _files(tmp_path / "A" / "adapter")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # noqa: E731
    assert strip(_log(tmp_path / "B")) == strip(_log(tmp_path / "A"))  # every logged value but the timings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rewards": []}, "needs at least one reward"),
        ({"rewards": ["tinyrewards:raises"]}, "reward 'tinyrewards:raises' raised ValueError: broken reward"),
        ({"rewards": ["tinyrewards:not_a_number"]}, "reward 'tinyrewards:not_a_number' returned 'high'"),
        ({"rewards": ["exactly"]}, "unknown reward 'exactly'"),
        ({"rewards": ["tinyrewards:missing"]}, "module 'tinyrewards' has no function 'missing'"),
        ({"rewards": ["exact=heavy"]}, "weight 'heavy' is not a number"),
        ({"max_length": 20}, "no training prompt leaves room to generate"),
        ({"num_generations": 1}, "--num-generations must be at least 2"),
        ({"method": "head"}, "the head method trains a classification head"),
        ({"grad_accum": 2}, "leave --grad-accum at 1"),
        ({"difficulty": 9}, "difficulty must be an integer in 1..8"),
    ],
)
def test_bad_input_is_one_clear_error(grpo_config, overrides, message):
    with pytest.raises(SpartaError, match=message.replace("(", r"\(").replace(".", r"\.")):
        train(grpo_config(zero_shot=False, max_steps=1, **overrides))


def test_cli_reports_a_bad_reward_with_exit_code_2(instruct_model_dir, tmp_path, capsys):
    argv = [
        "train",
        "--task",
        "arithmetic",
        "--model",
        str(instruct_model_dir),
        "--rewards",
        "exact,nosuch",
        "--output",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--max-steps",
        "1",
    ]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown reward 'nosuch'" in err and "Traceback" not in err


def test_difficulty_is_refused_for_a_task_read_from_data(grpo_config):
    with pytest.raises(SpartaError, match="--difficulty sets a generated task"):
        train(grpo_config(task="gsm8k", objective="grpo", difficulty=3))
