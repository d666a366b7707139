"""Adapter files: `adapter_config.json` + `adapter_model.safetensors` (never pickle).

Index encodings of phi (the delta values are always stored in model order, one tensor per adapted weight):

* ``seed``: nothing but the sampler's inputs (seed, name, shape, density, in the JSON) plus the count and a
  checksum; the indices are regenerated on load and verified;
* ``coo16``: one coordinate tensor per dimension, uint16 where the dimension is at most 65,536 (the paper's
  two 16-bit indices), int32 otherwise;
* ``flat32``: one flat int32 position per value (int64 for tensors of 2**31 elements or more).

Delta values (and the head) are stored in float32, bfloat16 or float16.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.distributed.tensor import DTensor

from sparta.adapter.config import DTYPES, INDEX_FORMATS, SpartaConfig
from sparta.adapter.fingerprint import check_fingerprint, model_fingerprint
from sparta.adapter.sampling import indices_checksum, sample_indices
from sparta.adapter.targets import find_targets, is_head
from sparta.errors import SpartaError
from sparta.fileio import atomic_file, json_problem

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, detached: a parameter sharded by FSDP2 (a DTensor) is all-gathered, a collective, so
    under FSDP every rank must call `save_adapter` (each with its own `path`, or only rank 0 keeping its files)."""
    t = t.detach()
    return t.full_tensor() if isinstance(t, DTensor) else t


def _encode_indices(
    name: str, flat: torch.Tensor, shape: tuple[int, ...], index_format: str
) -> dict[str, torch.Tensor]:
    if index_format == "flat32":
        dtype = torch.int32 if int(np.prod(shape)) < 2**31 else torch.int64
        return {f"index/{name}": flat.to(dtype)}
    out = {}
    remaining = flat
    for dim in reversed(range(len(shape))):
        coord = remaining % shape[dim]
        remaining = remaining // shape[dim]
        out[f"index{dim}/{name}"] = coord.to(torch.uint16 if shape[dim] <= 65536 else torch.int32)
    return out


def _decode_indices(
    name: str, meta: dict, index_format: str, reader: Any, config: SpartaConfig
) -> torch.Tensor:
    shape = tuple(meta["shape"])
    count = int(meta["count"])
    if not 0 <= count <= int(np.prod(shape)):
        raise SpartaError(
            f"adapter config is corrupt: {name!r} claims {count} positions in a tensor of shape {shape}"
        )
    if index_format == "seed":
        flat = torch.from_numpy(
            sample_indices(int(np.prod(shape)), float(meta["density"]), config.seed, name, shape)
        )
        if flat.numel() != count or indices_checksum(flat.numpy()) != meta.get("checksum"):
            raise SpartaError(
                f"the indices of {name!r} regenerated from the seed do not match the adapter's checksum "
                "(different sampler version?); re-save the adapter with index_format='coo16' or 'flat32'"
            )
        return flat
    if index_format == "flat32":
        flat = _read(reader, f"index/{name}").to(torch.int64)
    else:
        coords = [_read(reader, f"index{dim}/{name}").to(torch.int64) for dim in range(len(shape))]
        if any(c.dim() != 1 or c.numel() != count for c in coords):
            raise SpartaError(
                f"adapter file is corrupt: the coordinates of {name!r} do not have {count} entries"
            )
        flat = torch.zeros(count, dtype=torch.int64)
        for coord, size in zip(coords, shape, strict=True):
            if count and (int(coord.min()) < 0 or int(coord.max()) >= size):
                raise SpartaError(f"adapter file is corrupt: a coordinate of {name!r} is out of range")
            flat = flat * size + coord
    n = int(np.prod(shape))
    if flat.dim() != 1 or flat.numel() != count:
        raise SpartaError(
            f"adapter file is corrupt: {name!r} has {flat.numel()} indices, its config says {count}"
        )
    if count and (int(flat.min()) < 0 or int(flat.max()) >= n or not bool((flat[1:] > flat[:-1]).all())):
        raise SpartaError(
            f"adapter file is corrupt: the indices of {name!r} are out of range or not strictly increasing"
        )
    return flat


def _read(reader: Any, key: str) -> torch.Tensor:
    try:
        return reader.get_tensor(key)
    except Exception as err:  # safetensors raises its own error types for missing or damaged tensors
        raise SpartaError(f"adapter weights file is missing tensor {key!r} or is corrupt ({err})") from None


def save_adapter(
    model: nn.Module, path: Path, *, index_format: str = "seed", delta_dtype: str = "float32"
) -> Path:
    """Write the adapter of `model` (a `SpartaModel`) into directory `path` (created if needed); returns `path`."""
    if index_format not in INDEX_FORMATS:
        raise SpartaError(f"index_format must be one of {', '.join(INDEX_FORMATS)}, got {index_format!r}")
    if delta_dtype not in DTYPES:
        raise SpartaError(f"delta_dtype must be one of {', '.join(DTYPES)}, got {delta_dtype!r}")
    dtype = DTYPES[delta_dtype]
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    params: dict[str, dict] = {}
    deltas, indices = model.delta_parameters(), model.delta_indices()
    for target in model.targets:
        flat = indices[target.name].detach().cpu()
        meta = {
            "shape": list(target.shape),
            "density": target.density,
            "count": int(flat.numel()),
            "kind": target.kind,
        }
        tensors[f"delta/{target.name}"] = _full(deltas[target.name]).to(dtype).cpu().contiguous()
        if index_format == "seed":
            meta["checksum"] = indices_checksum(flat.numpy())
        else:
            tensors.update(_encode_indices(target.name, flat, target.shape, index_format))
        params[target.name] = meta
    heads = {}
    for name, p in model.head_parameters().items():
        tensors[f"head/{name}"] = _full(p).to(dtype).cpu().contiguous()
        heads[name] = list(p.shape)
    base = model.base_model
    base_config = getattr(base, "config", None)
    document = {
        "adapter_type": "sparta",
        "format_version": FORMAT_VERSION,
        "config": model.sparta_config.to_dict(),
        "index_format": index_format,
        "delta_dtype": delta_dtype,
        "params": params,
        "heads": heads,
        "base_model": {
            "class": type(base).__name__,
            "name_or_path": getattr(base_config, "_name_or_path", None) or None,
            "num_labels": getattr(base_config, "num_labels", None) if heads else None,
            "fingerprint": model.base_fingerprint,
        },
    }

    with atomic_file(path / WEIGHTS_NAME) as tmp:
        # one metadata key only: safetensors writes the metadata map in no fixed order, and saving the same
        # adapter must give the same bytes (resume is checked bitwise; the SHA-256 below is of these bytes)
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        document["weights_sha256"] = _sha256(tmp)
    with atomic_file(path / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(document, indent=1))
    return path


def read_adapter_config(path: Path) -> dict:
    """The adapter's JSON document, with clear errors for a missing, corrupt or foreign directory."""
    if not path.is_dir():
        raise SpartaError(f"adapter directory {str(path)!r} does not exist")
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise SpartaError(f"{str(path)!r} is not a SpaRTA adapter: {CONFIG_NAME} is missing")
    try:
        document = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpartaError(f"{config_file} is corrupt (not valid JSON: {json_problem(err)})") from None
    if not isinstance(document, dict) or document.get("adapter_type") != "sparta":
        raise SpartaError(f"{config_file} is not a SpaRTA adapter config (adapter_type is not 'sparta')")
    if document.get("format_version") != FORMAT_VERSION:
        raise SpartaError(
            f"{config_file} has format_version {document.get('format_version')!r}; this sparta reads {FORMAT_VERSION}"
        )
    for key in ("config", "index_format", "params", "heads", "base_model"):
        if key not in document:
            raise SpartaError(f"{config_file} is corrupt: the key {key!r} is missing")
    if document["index_format"] not in INDEX_FORMATS:
        raise SpartaError(f"{config_file} has unknown index_format {document['index_format']!r}")
    return document


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_weights(path: Path, document: dict) -> Any:
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise SpartaError(f"{str(path)!r} is not a complete SpaRTA adapter: {WEIGHTS_NAME} is missing")
    expected = document.get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise SpartaError(
            f"{weights} is corrupt or truncated (its SHA-256 does not match adapter_config.json); "
            "re-save or re-download the adapter"
        )
    try:
        return safe_open(str(weights), framework="pt")
    except Exception as err:
        raise SpartaError(
            f"{weights} is corrupt or truncated ({err}); re-save or re-download the adapter"
        ) from None


def _indices_for(document: dict, reader: Any) -> dict[str, torch.Tensor]:
    try:
        config = SpartaConfig.from_dict(document["config"])
        return {
            name: _decode_indices(name, meta, document["index_format"], reader, config)
            for name, meta in document["params"].items()
        }
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as err:
        raise SpartaError(f"adapter config is corrupt ({type(err).__name__}: {err})") from None


@dataclass
class SavedAdapter:
    """An adapter read from disk and checked against one base model: what `SpartaModel.from_pretrained` needs."""

    config: SpartaConfig
    indices: dict[str, torch.Tensor]  # sorted flat positions phi per adapted tensor
    deltas: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]


def read_adapter_for(base_model: nn.Module, path: Path) -> SavedAdapter:
    """Read the adapter in `path` and check that `base_model` is its base model (fingerprint, targets, head
    shapes), without touching the model: a SpartaError names the first thing that does not fit."""
    document = read_adapter_config(path)
    try:
        config = SpartaConfig.from_dict(document["config"])
        saved = {
            name: (tuple(meta["shape"]), float(meta["density"])) for name, meta in document["params"].items()
        }
        saved_heads = {name: tuple(shape) for name, shape in document["heads"].items()}
        expected_fingerprint = document["base_model"].get("fingerprint") or {}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise SpartaError(f"{path / CONFIG_NAME} is corrupt ({type(err).__name__}: {err})") from None
    heads = [n for n, _ in base_model.named_modules() if n and is_head(n, config.head_modules)]
    check_fingerprint(expected_fingerprint, model_fingerprint(base_model, exclude=heads), required=saved)
    found = {t.name: (t.shape, t.density) for t in find_targets(base_model, config)}
    if found != saved:
        raise SpartaError(
            f"the adapter's targets do not match what its config selects on this model "
            f"({len(saved)} saved, {len(found)} found); is this the right base model?"
        )
    model_heads = {f"{h}.{n}": p for h in heads for n, p in base_model.get_submodule(h).named_parameters()}
    for name, shape in saved_heads.items():
        if name not in model_heads:
            raise SpartaError(
                f"the adapter has a head {name!r} but the base model has none; load a model with that head"
            )
        if tuple(model_heads[name].shape) != shape:
            raise SpartaError(
                f"head {name!r} has shape {shape} in the adapter but {tuple(model_heads[name].shape)} in the "
                f"model: load the base model with num_labels={shape[0]}"
            )
    reader = _open_weights(path, document)
    indices = _indices_for(document, reader)
    deltas = {name: _read(reader, f"delta/{name}") for name in saved}
    for name, values in deltas.items():
        if values.dim() != 1 or values.numel() != indices[name].numel():
            raise SpartaError(
                f"adapter file is corrupt: delta of {name!r} has {values.numel()} values for {indices[name].numel()} indices"
            )
    head_values = {name: _read(reader, f"head/{name}") for name in saved_heads}
    for name, values in head_values.items():
        if tuple(values.shape) != saved_heads[name]:
            raise SpartaError(f"adapter file is corrupt: head {name!r} has shape {tuple(values.shape)}")

    return SavedAdapter(config, indices, deltas, head_values)


def read_sparse_deltas(path: Path) -> dict[str, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]]:
    """{parameter name: (shape, sorted flat int64 positions phi, float32 deltas)}, without the base model."""
    document = read_adapter_config(Path(path))
    reader = _open_weights(Path(path), document)
    indices = _indices_for(document, reader)
    return {
        name: (tuple(meta["shape"]), indices[name], _read(reader, f"delta/{name}").float())
        for name, meta in document["params"].items()
    }


def read_heads(path: Path) -> dict[str, torch.Tensor]:
    """{head parameter name: float32 tensor} of an adapter directory."""
    document = read_adapter_config(Path(path))
    reader = _open_weights(Path(path), document)
    return {name: _read(reader, f"head/{name}").float() for name in document["heads"]}


def iter_dense_deltas(path: Path) -> Iterator[tuple[str, tuple[int, ...], torch.Tensor]]:
    """(parameter name, shape, dense float32 delta) for every adapted tensor, without needing the base model."""
    for name, (shape, flat, values) in read_sparse_deltas(path).items():
        dense = torch.zeros(int(np.prod(shape)), dtype=torch.float32)
        dense[flat] = values
        yield name, shape, dense.view(shape)


def adapter_bytes(path: Path) -> int:
    """Bytes on disk of an adapter directory (config + weights)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
