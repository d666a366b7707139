"""One rank of `sparta train` under FSDP2, run by torchrun from test_train_fsdp.py; argv[1] is a TrainConfig JSON.

accelerate (1.15) cannot select FSDP on a CPU-only machine (its FSDP branch is for accelerator devices; `--cpu`
means DDP on gloo), so this stands in for `accelerate.prepare` with what it does for FSDP2: `fully_shard` per
decoder layer and at the root, then the optimizer's parameters swapped for the sharded ones by name. Everything
else is the real training loop, which sees a sharded engine (`Runtime.sharded`) as it would under accelerate.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from sparta.train import TrainConfig, train
from sparta.train import distributed as dist_mod
from sparta.train.distributed import end_launch


class FSDP2Runtime(dist_mod.Runtime):
    @property
    def sharded(self) -> bool:
        return True

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer):  # noqa: ANN201
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        before = {id(p): n for n, p in model.named_parameters()}
        for layer in model.base_model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        after = dict(model.named_parameters())
        assert all(isinstance(p, DTensor) for p in after.values())
        for group in optimizer.param_groups:
            group["params"] = [after[before[id(p)]] for p in group["params"]]
        return model, optimizer


def from_launch(cls, device: str | None) -> dist_mod.Runtime:  # noqa: ANN001
    from accelerate import Accelerator

    acc = Accelerator(cpu=True, step_scheduler_with_optimizer=False)  # MULTI_CPU: the gloo process group
    return FSDP2Runtime(acc.process_index, acc.num_processes, acc)


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist_mod.Runtime.from_launch = classmethod(from_launch)
    train(TrainConfig(**json.loads(sys.argv[1])))
    end_launch()  # as `sparta train` does after a multi-process run
