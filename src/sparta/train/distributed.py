"""One process or many: the few collective operations the training loop needs.

Under `accelerate launch` (WORLD_SIZE > 1) an `accelerate.Accelerator` wraps the model in DDP (or whatever the
launch config asks for) and the optimizer; each rank trains on its slice of every global batch. A plain process
gets `Runtime.single()`, whose operations are no-ops, so the loop behaves exactly as a single-process loop.
Engines that shard parameters (FSDP, DeepSpeed ZeRO-3) get SpaRTA in its functional merge mode (`merge_mode_for`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparta.errors import SpartaError


def end_launch() -> None:
    """Take down this process's process group after a finished multi-process run (what accelerate's
    `end_training` does), before the interpreter exits: its communication threads are then joined in order
    rather than left to the C++ teardown at exit. Nothing happens in a single-process run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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
        from accelerate import (
            Accelerator,
            DistributedDataParallelKwargs,
        )  # only multi-process launches need it

        cpu = device == "cpu" or not torch.cuda.is_available()
        # Buffers never change during training (no batch norm in these LMs): skip the per-forward broadcast.
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
        # sparta runs autocast and the loss scaler itself (`sparta.precision`, which reads accelerate's
        # --mixed_precision setting): accelerate must not wrap the forward a second time
        acc = Accelerator(
            cpu=cpu, mixed_precision="no", kwargs_handlers=[ddp], step_scheduler_with_optimizer=False
        )
        if str(acc.distributed_type).upper().endswith("FSDP") and not getattr(acc, "is_fsdp2", False):
            raise SpartaError(
                "sparta train supports FSDP2 only: set fsdp_version: 2 in the accelerate config"
            )
        return cls(acc.process_index, acc.num_processes, acc)

    def describe(self) -> str:
        """One line for the run log: how many processes, which engine and collective backend, which device.

        `accelerate launch --cpu --num_processes N` starts a single process in accelerate 1.15 (its --cpu path is
        the plain launcher; N CPU processes need mpirun there), which would otherwise go unnoticed."""
        if not self.distributed:
            line = "processes: 1 (no distributed launch)"
            if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
                line += (
                    "; `accelerate launch --cpu` starts one process whatever --num_processes says: for N CPU "
                    "processes use `accelerate launch --multi_gpu --num_processes N ... sparta train --device cpu`"
                )
            return line
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
        engine = str(self.accelerator.distributed_type).rsplit(".", 1)[-1]
        device = getattr(self.accelerator, "device", "unknown device")
        return f"processes: {self.world} ({engine}, {backend} backend, {device})"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.accelerator is not None and self.world > 1

    @property
    def sharded(self) -> bool:
        """True when the engine shards parameters (FSDP, DeepSpeed ZeRO-3)."""
        if self.accelerator is None:
            return False
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return shards_parameters(str(self.accelerator.distributed_type), getattr(plugin, "zero_stage", None))

    @property
    def merge_mode(self) -> str:
        """SpaRTA's merge mode for this launch (see `merge_mode_for`)."""
        return "functional" if self.sharded else "inplace"

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

    @contextlib.contextmanager
    def full_parameters(self, model: nn.Module) -> Iterator[None]:
        """Every rank holds the whole parameters inside (a collective: all ranks must enter), so rank 0 can save
        them as plain tensors. A no-op unless the engine shards parameters."""
        if not (self.distributed and self.sharded):
            yield
            return
        if str(self.accelerator.distributed_type).upper().endswith("DEEPSPEED"):
            import deepspeed  # optional: only a DeepSpeed launch gets here

            with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
                yield
            return
        from torch.distributed.fsdp import FSDPModule  # only a sharded launch gets here

        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()


def shards_parameters(distributed_type: str, zero_stage: int | None) -> bool:
    """True for accelerate's FSDP and for DeepSpeed ZeRO-3 (`distributed_type` as str(DistributedType.X))."""
    engine = distributed_type.upper()
    return engine.endswith("FSDP") or (engine.endswith("DEEPSPEED") and (zero_stage or 0) >= 3)


def merge_mode_for(distributed_type: str, zero_stage: int | None) -> str:
    """SpaRTA's merge mode for an engine: "functional" where parameters are sharded, else "inplace".

    In place, a SpartaLinear writes W[phi] = W0[phi] + delta into its frozen weight's storage before a forward.
    With sharded parameters the full weight exists only transiently (all-gathered for forward and backward,
    freed after), so that write would be lost or land in the wrong storage: FSDP2 on CPU, measured, trains a
    different trajectory and leaves the weights at W0. Functional mode never writes the weight and builds the
    merged W per forward instead. DDP and ZeRO-1/2 replicate parameters and keep the faster in-place merge.
    """
    return "functional" if shards_parameters(distributed_type, zero_stage) else "inplace"
