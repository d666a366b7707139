"""SpaRTA under FSDP2 (`fully_shard`) with 2 CPU processes (gloo), against one process without FSDP.

The ranks (fsdp_worker.py, under torchrun) shard a tiny Llama classifier adapted in functional mode per decoder
layer and at the root, and train on halves of the same global batches the single process trains on.
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from fsdp_worker import CONFIG, LR, batches, probe, tiny_classifier
from safetensors.torch import load_file

from sparta import SpartaConfig, SpartaModel, get_sparta_model
from tinylm import run_launch

torch.set_num_threads(1)
WORKER = Path(__file__).with_name("fsdp_worker.py")
# same global batches, one process vs two: float rounding only (each rank's loss is a mean over its half, and
# FSDP's reduce-scatter averages the two halves' gradients)
REL_TOL = 1e-5

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs gloo"
)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(out),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = run_launch(cmd, capture_output=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return out


@pytest.fixture(scope="module")
def single_run() -> tuple[list[float], torch.Tensor]:
    """The same training in one process, no FSDP, inplace mode (the default): losses and probe logits."""
    model = get_sparta_model(tiny_classifier(), SpartaConfig(**CONFIG))
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for batch in batches():
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        return losses, model(input_ids=probe()).logits


def test_fsdp_shards_the_weights_and_deltas(fsdp_run):
    result = json.loads((fsdp_run / "result.json").read_text())
    assert result["weight_is_dtensor"] and result["delta_is_dtensor"]
    assert result["weight_local_rows"] * 2 == result["weight_rows"]
    assert result["merge_modes"] == ["functional"]


def test_two_fsdp_ranks_train_like_one_process(fsdp_run, single_run):
    losses, logits = single_run
    result = json.loads((fsdp_run / "result.json").read_text())
    assert len(result["losses"]) == len(losses) and losses[0] != losses[-1]
    for one, two in zip(losses, result["losses"], strict=True):
        assert abs(one - two) <= REL_TOL * abs(one), (losses, result["losses"])
    torch.testing.assert_close(torch.tensor(result["logits"]), logits, rtol=1e-4, atol=1e-5)


def test_gathered_adapter_loads_into_a_fresh_model_with_the_same_logits(fsdp_run):
    rank0, rank1 = fsdp_run / "adapter-rank0", fsdp_run / "adapter-rank1"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (rank0 / name).read_bytes() == (rank1 / name).read_bytes()
    loaded = SpartaModel.from_pretrained(tiny_classifier(), rank0)
    assert loaded.sparta_config.merge_mode == "functional"
    with torch.no_grad():
        logits = loaded(input_ids=probe()).logits
    result = json.loads((fsdp_run / "result.json").read_text())
    torch.testing.assert_close(logits, torch.tensor(result["logits"]), rtol=1e-5, atol=1e-6)
    assert any(d.abs().max() > 1e-3 for d in loaded.delta_parameters().values())


def test_frozen_weights_stay_bitwise_pretrained_under_fsdp(fsdp_run):
    frozen = load_file(str(fsdp_run / "frozen.safetensors"))
    pretrained = tiny_classifier().state_dict()
    assert len(frozen) == 2 * 7
    for name, weight in frozen.items():
        assert torch.equal(weight, pretrained[name]), name
