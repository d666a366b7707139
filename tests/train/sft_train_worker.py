"""One rank of an SFT `sparta train` on the toy task (tinysft.py's files), run from test_train_sft.py;
argv[1] is a TrainConfig JSON, argv[2] "ddp" (under `accelerate launch`) or "fsdp" (under torchrun, FSDP2 as
fsdp_train_worker.py sets it up)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the FSDP worker

import fsdp_train_worker  # noqa: E402

from sparta.train import TrainConfig, train  # noqa: E402
from sparta.train import distributed as dist_mod  # noqa: E402
from sparta.train.distributed import end_launch

if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[2] == "fsdp":
        dist_mod.Runtime.from_launch = classmethod(fsdp_train_worker.from_launch)
    train(TrainConfig(**json.loads(sys.argv[1])))
    end_launch()  # as `sparta train` does after a multi-process run
