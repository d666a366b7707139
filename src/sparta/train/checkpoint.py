"""Resumable training checkpoints, written atomically and read back without pickle.

`OUTPUT/checkpoint-STEP/` holds everything a run needs to continue exactly where it stopped:

* ``trainable.safetensors``: the trainable tensors (sparta: deltas and head; lora/dora: the PEFT trainable state;
  head: the head; full: every parameter), by parameter name;
* ``optimizer.safetensors`` + ``optimizer.json``: the optimizer state_dict, tensors flattened as
  ``state/<param index>/<key>``, everything else (param groups, scalar state) as JSON;
* ``scheduler.json``: the LR scheduler's state_dict (plain numbers);
* ``rng.json`` + ``rng.safetensors``: python, numpy and torch (CPU, CUDA) generator states of every rank;
* ``best.safetensors``: the early-stopping copy of the best trainable state, when one is kept;
* ``state.json``: step, data-stream position, early-stopping state, history, loss/timing counters, the
  zero-shot metrics and the config the run was started with.

A checkpoint is written into ``.checkpoint-STEP.tmp/`` and renamed when complete, so a crash while saving
leaves the previous checkpoints intact; only the newest `keep` are kept. Nothing here calls `torch.load`.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sparta.errors import SpartaError
from sparta.fileio import atomic_dir, write_json
from sparta.runs.layout import CHECKPOINT_PREFIX as PREFIX

_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SpartaError(
            f"checkpoint file {path} is unreadable ({err}); resume from an earlier one"
        ) from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types on truncated/corrupt files
        raise SpartaError(
            f"checkpoint file {path} is unreadable ({err}); resume from an earlier one"
        ) from None


# -- optimizer state without pickle --------------------------------------------------------------------------------
def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as (tensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of flatten_optimizer (JSON lists in param groups become tuples again, e.g. AdamW's betas)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = [
        {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# -- random generators ---------------------------------------------------------------------------------------------
def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's generator states: (JSON-able python/numpy part, torch tensors)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return plain, tensors


def set_rng_state(plain: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# -- checkpoints ---------------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    state: dict
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: list[tuple[dict, dict[str, torch.Tensor]]]  # one per rank of the run that wrote it
    best: dict[str, torch.Tensor] | None

    @property
    def step(self) -> int:
        return int(self.state["step"])


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints under output, oldest first."""
    if not Path(output).is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in Path(output).iterdir() if p.is_dir() and (m := _NAME.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    output: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict,
    scheduler_state: dict,
    rng: list[tuple[dict, dict[str, torch.Tensor]]],
    state: dict,
    best: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write output/checkpoint-STEP atomically, then delete all but the newest `keep` checkpoints."""
    final = Path(output) / f"{PREFIX}{step}"
    with atomic_dir(final) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in trainable.items()},
            str(tmp / "trainable.safetensors"),
        )
        opt_tensors, opt_meta = flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", opt_meta)
        write_json(tmp / "scheduler.json", scheduler_state)
        write_json(tmp / "rng.json", [plain for plain, _ in rng])
        rng_tensors = {f"{rank}/{k}": v for rank, (_, ts) in enumerate(rng) for k, v in ts.items()}
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        if best is not None:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in best.items()}, str(tmp / "best.safetensors")
            )
        write_json(tmp / "state.json", {**state, "step": step})
    for stale in list_checkpoints(output)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder (safetensors + JSON only); a SpartaError if anything is missing or corrupt."""
    path = Path(path)
    for name in ("state.json", "trainable.safetensors", "optimizer.safetensors", "optimizer.json"):
        if not (path / name).is_file():
            raise SpartaError(f"checkpoint {path} is incomplete (no {name}); resume from an earlier one")
    plains = _read_json(path / "rng.json")
    rng_tensors = _load_tensors(path / "rng.safetensors")
    rng = [
        (plain, {k.split("/", 1)[1]: v for k, v in rng_tensors.items() if k.split("/", 1)[0] == str(rank)})
        for rank, plain in enumerate(plains)
    ]
    best = path / "best.safetensors"
    return Checkpoint(
        path=path,
        state=_read_json(path / "state.json"),
        trainable=_load_tensors(path / "trainable.safetensors"),
        optimizer=unflatten_optimizer(
            _load_tensors(path / "optimizer.safetensors"), _read_json(path / "optimizer.json")
        ),
        scheduler=_read_json(path / "scheduler.json"),
        rng=rng,
        best=_load_tensors(best) if best.is_file() else None,
    )


def latest_checkpoint(output: Path) -> Path | None:
    found = list_checkpoints(output)
    return found[-1] if found else None


def check_trainable(
    model_state: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], where: Path
) -> None:
    """The checkpoint must hold exactly the model's trainable tensors, with the same shapes."""
    missing = sorted(set(model_state) - set(saved))
    extra = sorted(set(saved) - set(model_state))
    wrong = [n for n in set(model_state) & set(saved) if tuple(model_state[n].shape) != tuple(saved[n].shape)]
    if missing or extra or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for what, names in (("missing", missing), ("unexpected", extra), ("shape differs", sorted(wrong)))
            if names
        )
        raise SpartaError(f"checkpoint {where} does not match this model and method ({detail})")
