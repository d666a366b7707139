"""One process or many: the few collective operations the training loop needs.

Under `accelerate launch` (WORLD_SIZE > 1) an `accelerate.Accelerator` wraps the model in DDP (or whatever the
launch config asks for) and the optimizer; each rank trains on its slice of every global batch. A plain process
gets `Runtime.single()`, whose operations are no-ops, so the loop behaves exactly as a single-process loop.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparta.errors import SpartaError


def launched_distributed() -> bool:
    """True inside a multi-process launch (accelerate launch / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    accelerator: Any = None

    @classmethod
    def single(cls) -> Runtime:
        return cls()

    @classmethod
    def from_launch(cls, device: str | None) -> Runtime:
        """The accelerate state of this launch; `--device cpu` (or no CUDA) forces the CPU/gloo backend."""
        from accelerate import Accelerator, DistributedDataParallelKwargs

        cpu = device == "cpu" or not torch.cuda.is_available()
        # Buffers never change during training (no batch norm in these LMs): skip the per-forward broadcast.
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
        acc = Accelerator(cpu=cpu, kwargs_handlers=[ddp], step_scheduler_with_optimizer=False)
        return cls(acc.process_index, acc.num_processes, acc)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.accelerator is not None and self.world > 1

    def check(self, method: str) -> None:
        """check_engine for this launch."""
        if self.accelerator is None:
            return
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        check_engine(str(self.accelerator.distributed_type), getattr(plugin, "zero_stage", None), method)

    def device(self, default: torch.device) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else default

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        if self.accelerator is None:
            return model, optimizer
        # torch >= 2.10 renames DDP's broadcast_buffers; accelerate still passes the old name
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model) if self.accelerator is not None else model

    def no_sync(self, model: nn.Module, skip: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulation step."""
        if skip and self.distributed:
            return self.accelerator.no_sync(model)
        return contextlib.nullcontext()

    def sum(self, value: float) -> float:
        """The sum of a float over all ranks (float64, so one process and many round alike)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()


def check_engine(distributed_type: str, zero_stage: int | None, method: str) -> None:
    """Refuse engines that shard parameters (FSDP, DeepSpeed ZeRO-3) for SpaRTA.

    A SpartaLinear merges its delta into the frozen weight in place (W[phi] = W0[phi] + delta, lazily before the
    next forward). With sharded parameters the full weight only exists transiently during forward and backward,
    so that in-place merge would be lost or applied to the wrong storage. DDP and ZeRO-1/2 replicate parameters
    and are fine; LoRA/DoRA/head/full have no such state and may use any engine.
    """
    sharded = distributed_type.upper().endswith("FSDP") or (
        distributed_type.upper().endswith("DEEPSPEED") and (zero_stage or 0) >= 3
    )
    if method == "sparta" and sharded:
        raise SpartaError(
            f"sparta cannot train under {distributed_type} with sharded parameters (its deltas are merged into "
            "the frozen weights in place); use DDP (accelerate launch --multi_gpu) or DeepSpeed ZeRO-1/2"
        )
