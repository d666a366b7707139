"""Checkpoints and --resume: a crashed run continues to the same adapter and metrics as an uninterrupted one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparta.errors import SpartaError
from sparta.objectives import Classification
from sparta.train import checkpoint as C
from sparta.train import train

REPO = Path(__file__).resolve().parents[2]


def _files(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def _same_run(a: dict, b: dict, out_a: Path, out_b: Path, adapter: str = "adapter") -> None:
    assert b["metrics"] == a["metrics"] and b["history"] == a["history"] and b["zero_shot"] == a["zero_shot"]
    assert (b["best_step"], b["steps"], b["epochs"]) == (a["best_step"], a["steps"], a["epochs"])
    assert _files(out_b / adapter) == _files(out_a / adapter)  # bitwise


class Crash(Exception):
    pass


def test_resume_after_kill_is_bitwise_identical(toy_config, tmp_path):
    """Run A: 8 steps. Run B: same seed, --save-every 3, killed by os._exit(137) after step 5, then resumed."""
    cfg_a = toy_config(max_steps=8, eval_every=2, output=str(tmp_path / "A"))
    a = train(cfg_a)
    cfg_b = toy_config(max_steps=8, eval_every=2, save_every=3, output=str(tmp_path / "B"))
    # the process dies right after step 5 (as kill -9 would), through train's own per-step hook
    code = (
        "import json, os, sys; from sparta.train import TrainConfig, train; "
        "train(TrainConfig(**json.loads(sys.argv[1])), on_step=lambda s: os._exit(137) if s == 5 else None)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg_b.to_dict())], env=env, capture_output=True, cwd=REPO
    )
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]
    out_b = Path(cfg_b.output)
    assert [p.name for p in C.list_checkpoints(out_b)] == ["checkpoint-3"]
    assert not (out_b / "results.json").exists() and not (out_b / "adapter").exists()
    rows = (out_b / "log.csv").read_text().splitlines()
    assert rows[-1].startswith("5,")  # steps 4 and 5 were logged after the checkpoint, then lost

    cfg_b.resume = True
    b = train(cfg_b)
    assert b["resumed_from_step"] == 3
    _same_run(a, b, Path(cfg_a.output), out_b)
    steps = [int(r.split(",")[0]) for r in (out_b / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 9))  # the rows after the checkpoint were dropped and written again


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_other_methods(toy_config, tmp_path, monkeypatch, method):
    """In-process crash (an exception after step 4) and resume, for a PEFT and a full fine-tuning run."""
    extra = dict(method=method, lr=1e-3, max_steps=6, eval_every=3, zero_shot=False)
    a = train(toy_config(**extra, output=str(tmp_path / "A")))

    def crash(step: int) -> None:
        if step == 4:
            raise Crash

    cfg = toy_config(**extra, save_every=2, output=str(tmp_path / "B"))
    with pytest.raises(Crash):
        train(cfg, on_step=crash)
    cfg.resume = str(tmp_path / "B")
    b = train(cfg)
    assert b["resumed_from_step"] == 4
    _same_run(a, b, tmp_path / "A", tmp_path / "B", adapter="model" if method == "full" else "adapter")


def test_checkpoints_rotate_and_hold_no_pickle(toy_config, tmp_path):
    cfg = toy_config(max_steps=9, save_every=2, keep_checkpoints=2, eval_every=4)
    train(cfg)
    out = Path(cfg.output)
    kept = C.list_checkpoints(out)
    assert [p.name for p in kept] == ["checkpoint-6", "checkpoint-8"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    suffixes = {f.suffix for p in kept for f in p.iterdir()}
    assert suffixes == {".json", ".safetensors"}
    ck = C.load_checkpoint(kept[-1])
    assert ck.step == 8 and ck.state["stream"] == {"epoch": 0, "index": 8} and ck.best is not None
    assert set(ck.trainable) == {n for n in ck.best}  # the best state has the same tensors
    assert ck.optimizer["param_groups"][0]["betas"] == (0.9, 0.999)


def test_optimizer_state_round_trips_without_pickle():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    tensors, meta = C.flatten_optimizer(sd)
    back = C.unflatten_optimizer(tensors, json.loads(json.dumps(meta)))
    fresh = torch.optim.AdamW(model.parameters(), lr=5.0)
    fresh.load_state_dict(back)
    again = fresh.state_dict()
    assert again["param_groups"] == sd["param_groups"]
    for i, entry in sd["state"].items():
        for key, value in entry.items():
            assert torch.equal(again["state"][i][key], value)


def test_interrupted_save_keeps_the_previous_checkpoint(toy_config, tmp_path, monkeypatch):
    """A crash inside save_checkpoint (here: the disk 'fails' on the second save) leaves checkpoint-2 whole."""
    calls = {"n": 0}
    real = C.save_file

    def failing_save(tensors, path):
        calls["n"] += 1
        if calls["n"] > 6:  # a checkpoint writes 4 safetensors files here; fail inside the second
            raise OSError("disk full")
        return real(tensors, path)

    monkeypatch.setattr(C, "save_file", failing_save)
    cfg = toy_config(max_steps=8, save_every=2, eval_every=2)
    with pytest.raises(OSError):
        train(cfg)
    out = Path(cfg.output)
    assert [p.name for p in C.list_checkpoints(out)] == ["checkpoint-2"]
    assert C.load_checkpoint(out / "checkpoint-2").step == 2
    (out / ".checkpoint-6.tmp").mkdir()  # debris of a kill -9 mid-save is ignored
    monkeypatch.undo()
    cfg.resume = True
    assert train(cfg)["resumed_from_step"] == 2


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(
    toy_config, tmp_path, monkeypatch, capsys
):
    from sparta.cli import main

    real = Classification.batch_loss
    calls = {"n": 0}

    def nan_at_step_4(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(Classification, "batch_loss", staticmethod(nan_at_step_4))
    cfg = toy_config()
    argv = [
        "train",
        "--task",
        "custom",
        "--train-file",
        cfg.train_file,
        "--dev-file",
        cfg.dev_file,
        "--model",
        cfg.model,
        "--output",
        cfg.output,
        "--batch-size",
        "8",
        "--max-steps",
        "8",
        "--save-every",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--no-zero-shot",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training loss is nan at step 4" in err and "checkpoint-2" in err and "Traceback" not in err
    out = Path(cfg.output)
    assert [p.name for p in C.list_checkpoints(out)] == ["checkpoint-2"] and not (
        out / "results.json"
    ).exists()


def test_resume_refusals(toy_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpartaError, match="no checkpoint"):
        train(toy_config(output=str(empty), resume=True))
    cfg = toy_config(max_steps=4, save_every=2)
    crashed = Path(cfg.output)
    crashed.mkdir()
    with pytest.raises(SpartaError, match="train with --save-every"):
        train(toy_config(resume=str(crashed)))
    train(cfg)
    with pytest.raises(SpartaError, match="finished run"):
        train(toy_config(max_steps=4, save_every=2, resume=True))
    (crashed / "results.json").unlink()
    with pytest.raises(SpartaError, match="--resume to continue"):  # checkpoints but no --resume
        train(toy_config(max_steps=4, save_every=2))
    with pytest.raises(SpartaError, match="settings differ.*lr"):
        train(toy_config(max_steps=4, save_every=2, lr=0.5, resume=True))
    with pytest.raises(SpartaError, match="differ; give one run dir"):
        train(toy_config(resume=str(tmp_path / "other")))
