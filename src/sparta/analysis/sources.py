"""What `sparta rank` compares: model directories read lazily from safetensors, `sparta train` run directories,
weight names matched up to the task model's prefix, and the check that a base is a SpaRTA adapter's base model.

A classifier's weights carry its task model's prefix (``bert.encoder.layer.0...`` in BertForSequenceClassification)
while a base checkpoint saved from the bare model has none (``encoder.layer.0...``); causal LMs and their
classifiers share one (``model.layers.0...``). `match_names` pairs names up to one such leading component.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sparta.adapter.fingerprint import check_fingerprint, hash_samples, sample_positions
from sparta.errors import SpartaError
from sparta.methods import METHODS

RUN_FILE = "run.json"  # as sparta.train.results writes them; not imported, so rank needs no training stack
ADAPTER_DIR, MODEL_DIR = "adapter", "model"


class SafetensorsDir:
    """Lazy access to the tensors of a model directory (single file, several files, or a sharded index)."""

    def __init__(self, path: str | Path, what: str = "model"):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SpartaError(f"{what} directory {str(path)!r} does not exist")
        index = sorted(self.path.glob("*.safetensors.index.json"))
        self.files: dict[str, Path] = {}
        if index:
            try:
                weight_map = json.loads(index[0].read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as err:
                raise SpartaError(f"cannot read the shard index {index[0]}: {err}") from None
            self.files = {k: self.path / v for k, v in weight_map.items()}
        else:
            for file in sorted(self.path.glob("*.safetensors")):
                for key in self._open(file).keys():  # noqa: SIM118 - safe_open is not a dict
                    self.files[key] = file
        if not self.files:
            raise SpartaError(
                f"no *.safetensors weights in {self.path} (a Hugging Face model directory is needed)"
            )
        self._handles: dict[Path, Any] = {}

    def _open(self, file: Path) -> Any:
        try:
            return safe_open(str(file), framework="pt")
        except Exception as err:  # noqa: BLE001 - corrupt or missing shard
            raise SpartaError(f"cannot open {file}: {err}") from None

    def _handle(self, name: str) -> Any:
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = self._open(file)
        return self._handles[file]

    def names(self) -> list[str]:
        return list(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return str(self._handle(name).get_slice(name).get_dtype())

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

    def value_hash(self, name: str) -> str | None:
        """`sparta.adapter.fingerprint`'s value hash of a stored tensor, reading only the rows it samples."""
        shape = self.shape(name)
        numel = int(torch.tensor(shape).prod()) if shape else 1
        if numel == 0:
            return None
        if len(shape) < 2:
            return hash_samples(self.get(name).reshape(-1)[sample_positions(numel)])
        sliced, row = self._handle(name).get_slice(name), numel // shape[0]
        rows: dict[int, torch.Tensor] = {}
        values = []
        for p in sample_positions(numel).tolist():
            if p // row not in rows:
                rows[p // row] = sliced[p // row : p // row + 1].reshape(-1)
            values.append(rows[p // row][p % row])
        return hash_samples(torch.stack(values))


def match_names(names: Iterable[str], targets: Iterable[str]) -> dict[str, str]:
    """{name: the target name it is}, up to one leading component (the task model's prefix) added to or removed
    from `names`: of the identity and each such change, the one that pairs the most names."""
    names, targets = list(names), set(targets)
    maps = [lambda n: n]
    for prefix in sorted({n.split(".", 1)[0] for n in names if "." in n}):
        maps.append(lambda n, p=f"{prefix}.": n.removeprefix(p))
    for prefix in sorted({t.split(".", 1)[0] for t in targets if "." in t}):
        maps.append(lambda n, p=f"{prefix}.": p + n)
    pairs = [{n: f(n) for n in names if f(n) in targets} for f in maps]
    return max(pairs, key=len)  # the first (identity) on ties


def check_adapter_base(document: dict, base: SafetensorsDir, adapter: Path) -> None:
    """Raise a SpartaError unless `base` holds the weights the SpaRTA adapter (its config `document`) was trained
    on: names (up to the task model's prefix), shapes and the stored fingerprint's sampled values."""
    expected = document["base_model"].get("fingerprint") or {}
    required = {name: meta["shape"] for name, meta in document["params"].items()}
    pairs = match_names({*expected, *required}, base.names())
    actual = {name: [list(base.shape(stored)), base.dtype(stored), None] for name, stored in pairs.items()}
    for name, stored in pairs.items():
        if name in expected and expected[name][2]:
            actual[name][2] = base.value_hash(stored)
    if not expected:  # no fingerprint stored: the adapted tensors' names and shapes at least
        expected = {name: [shape, None, None] for name, shape in required.items()}
    try:
        check_fingerprint(expected, actual, required=required)
    except SpartaError as err:
        raise SpartaError(f"{base.path} is not the base model of the adapter {adapter}: {err}") from None


@dataclass
class RankInputs:
    """The resolved arguments of `sparta rank`: the base model dir, the thing compared, and what it is."""

    base: Path
    finetuned: Path  # a full model dir, a PEFT LoRA adapter dir or a SpaRTA adapter dir
    kind: str  # "full", "lora" or "sparta"


def resolve_inputs(base: str | Path | None, finetuned: str | Path) -> RankInputs:
    """Accept a `sparta train` run dir (run.json + adapter/ or model/), an export, an adapter or a model dir as
    `finetuned`; without `base`, the base model the run (or the adapter) records."""
    finetuned = Path(finetuned)
    if not finetuned.is_dir():
        raise SpartaError(f"fine-tuned model or adapter directory {str(finetuned)!r} does not exist")
    info = _read_json(finetuned / RUN_FILE) if (finetuned / RUN_FILE).is_file() else {}
    method = METHODS.get(info.get("method") or "")  # asked of the method plug-in; None: not a run
    if method is not None and method.trains_head_only:
        raise SpartaError(
            f"{finetuned} is a head-only run: no backbone weight changed, there is no delta to rank"
        )
    if method is not None:
        finetuned = finetuned / (MODEL_DIR if method.saves_model else ADAPTER_DIR)
    if not finetuned.is_dir():
        raise SpartaError(f"{finetuned} does not exist; is {finetuned.parent} a finished training run?")
    config = (
        _read_json(finetuned / "adapter_config.json")
        if (finetuned / "adapter_config.json").is_file()
        else None
    )
    if config is None:
        kind = "full"
    elif config.get("adapter_type") == "sparta":
        kind = "sparta"
    elif str(config.get("peft_type", "")).upper() == "LORA":
        kind = "lora"
    else:
        raise SpartaError(
            f"{finetuned}/adapter_config.json is neither a PEFT LoRA adapter nor a SpaRTA adapter "
            f"(peft_type={config.get('peft_type')!r})"
        )
    if base is None:
        base = _recorded_base(info, config, finetuned)
    return RankInputs(Path(base), finetuned, kind)


def _recorded_base(info: dict, config: dict | None, finetuned: Path) -> str:
    """The base model dir a run (run.json) or an adapter config records; a registry alias is resolved."""
    sparta_base = (config or {}).get("base_model") if (config or {}).get("adapter_type") == "sparta" else None
    recorded = info.get("model_path") or info.get("model") or (sparta_base or {}).get("name_or_path")
    recorded = recorded or (config or {}).get("base_model_name_or_path")
    if not recorded:
        raise SpartaError(f"{finetuned} does not record its base model; pass BASE FINETUNED")
    if Path(recorded).is_dir():
        return str(recorded)
    from sparta.models import resolve_model

    path = resolve_model(recorded).path
    if not Path(path).is_dir():
        raise SpartaError(
            f"the recorded base model {recorded!r} is not a local directory; pass BASE FINETUNED"
        )
    return path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SpartaError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise SpartaError(f"{path} is not a JSON object")
    return data
