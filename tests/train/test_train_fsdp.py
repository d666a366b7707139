"""`sparta train` with sharded parameters: the merge mode follows the engine, and the loop under FSDP2 with
2 CPU processes (gloo; fsdp_train_worker.py stands in for accelerate's FSDP2 prepare) trains like one process."""

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sparta.adapter.io import read_heads, read_sparse_deltas
from sparta.errors import SpartaError
from sparta.train import loop as L
from sparta.train import train
from sparta.train.distributed import Runtime, merge_mode_for
from tinylm import assert_same_run, run_launch

WORKER = Path(__file__).with_name("fsdp_train_worker.py")


def _runtime(engine: str, zero_stage: int | None = None) -> Runtime:
    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage is not None else None
    acc = SimpleNamespace(
        distributed_type=engine, state=SimpleNamespace(deepspeed_plugin=plugin), device=torch.device("cpu")
    )
    return Runtime(0, 2, acc)


@pytest.mark.parametrize(
    ("engine", "stage", "mode"),
    [
        ("DistributedType.FSDP", None, "functional"),
        ("DistributedType.DEEPSPEED", 3, "functional"),
        ("DistributedType.DEEPSPEED", 2, "inplace"),
        ("DistributedType.MULTI_GPU", None, "inplace"),
        ("DistributedType.MULTI_CPU", None, "inplace"),
        ("DistributedType.NO", None, "inplace"),
    ],
)
def test_merge_mode_follows_the_engine(engine, stage, mode):
    assert merge_mode_for(engine, stage) == mode
    rt = _runtime(engine, stage)
    assert rt.merge_mode == mode and rt.sharded == (mode == "functional")
    assert Runtime.single().merge_mode == "inplace" and not Runtime.single().sharded


def test_checkpoints_with_sharded_parameters_are_a_clear_error(toy_config, monkeypatch):
    monkeypatch.setattr(L, "launched_distributed", lambda: True)
    monkeypatch.setattr(
        L.Runtime, "from_launch", classmethod(lambda cls, device: _runtime("DistributedType.FSDP"))
    )
    with pytest.raises(SpartaError, match="not supported when FSDP or ZeRO-3 shard"):
        train(toy_config(save_every=2))


def _launch_fsdp(cfg, tmp_path: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        json.dumps(cfg.to_dict()),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = run_launch(cmd, env=env, capture_output=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads((Path(cfg.output) / "results.json").read_text())


def test_sparta_train_under_fsdp2_matches_one_process(toy_config, tmp_path):
    """2 ranks x batch 8 with sharded parameters (functional merge) vs 1 process x batch 16 (inplace): the same
    loss history, dev and test losses; the saved adapter (gathered from the shards) holds the same deltas."""
    # 3 eval batches of 12: rank 1 scores one and runs a stand-in (sharded forwards are collectives)
    common = dict(max_steps=6, eval_every=3, zero_shot=False, eval_batch_size=12)
    one = train(toy_config(batch_size=16, output=str(tmp_path / "one"), **common))
    two = _launch_fsdp(toy_config(batch_size=8, output=str(tmp_path / "two"), **common), tmp_path)
    assert two["processes"] == 2 and [h["step"] for h in two["history"]] == list(range(1, 7))
    assert_same_run(one, two)
    assert one["history"][0]["train_loss"] != one["history"][-1]["train_loss"]  # it trained

    configs = [json.loads((Path(r["adapter_path"]) / "adapter_config.json").read_text()) for r in (one, two)]
    assert [c["config"]["merge_mode"] for c in configs] == ["inplace", "functional"]
    one_deltas, two_deltas = (read_sparse_deltas(Path(r["adapter_path"])) for r in (one, two))
    assert one_deltas.keys() == two_deltas.keys()
    for name, (shape, flat, values) in one_deltas.items():
        assert two_deltas[name][0] == shape and torch.equal(two_deltas[name][1], flat)
        torch.testing.assert_close(two_deltas[name][2], values, rtol=1e-4, atol=1e-6)
    assert any(v.abs().max() > 1e-3 for _, _, v in two_deltas.values())
    one_heads, two_heads = (read_heads(Path(r["adapter_path"])) for r in (one, two))
    for name, head in one_heads.items():
        torch.testing.assert_close(two_heads[name], head, rtol=1e-4, atol=1e-6)
