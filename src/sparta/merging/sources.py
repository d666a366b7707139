"""The adapters to merge: a training run's SpaRTA adapter (with its run.json) or a bare adapter directory, read
without loading any model, and checked to share one base model before anything is merged. A classifier adapter
brings one linear head; a language-modelling (SFT) adapter brings none (or, when its run trained the LM head, a
trained copy of it), and merges into one causal LM."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sparta.adapter.io import read_adapter_config, read_heads, read_sparse_deltas
from sparta.errors import SpartaError
from sparta.fileio import read_json
from sparta.methods import METHODS
from sparta.runs.causal import LANGUAGE_MODELLING, is_causal_lm
from sparta.runs.layout import ADAPTER_DIR, RUN_FILE

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a task's key in the merged model


@dataclass
class AdapterSource:
    """One adapter to merge: a training output dir (run.json + adapter/) or a bare adapter dir."""

    path: Path  # the adapter directory (adapter_config.json + adapter_model.safetensors)
    run_dir: Path | None  # the training output directory, when given one
    document: dict  # adapter_config.json
    info: dict  # run.json ({} for a bare adapter)
    name: str  # the task's key in the merged model
    objective: str = "classification"  # "language-modelling" for an SFT adapter

    @property
    def causal_lm(self) -> bool:
        return is_causal_lm(self.objective)

    @property
    def base_model(self) -> str | None:
        return self.info.get("model") or self.document["base_model"].get("name_or_path")

    @property
    def head(self) -> dict[str, list[int]]:
        return self.document["heads"]

    @property
    def num_labels(self) -> int:
        return int(next(iter(self.head.values()))[0])

    @property
    def count(self) -> int:
        return sum(int(m["count"]) for m in self.document["params"].values())


def open_adapter(path: str | Path) -> AdapterSource:
    """Read an adapter's config (and run.json when `path` is a training output dir)."""
    path = Path(path)
    if (path / RUN_FILE).is_file() and (path / ADAPTER_DIR).is_dir():
        info = read_json(path / RUN_FILE)
        method = METHODS.get(info.get("method") or "")
        if method is None or not method.sparse_adapter:
            raise SpartaError(f"{path} is a {info.get('method')!r} run; only SpaRTA adapters can be merged")
        adapter, run_dir = path / ADAPTER_DIR, path
    else:
        adapter, run_dir, info = path, None, {}
    document = read_adapter_config(adapter)
    task = (info.get("task") or {}).get("name")
    name = _clean_name(task if task and task != "custom" else (run_dir or adapter).resolve().name)
    objective = info.get("objective", "classification") if info else _bare_objective(document)
    if is_causal_lm(objective):
        return AdapterSource(adapter, run_dir, document, info, name, objective)
    if not document["heads"]:
        raise SpartaError(f"{adapter} has no trained head; merging keeps one head per task")
    modules = sorted({n.rsplit(".", 1)[0] for n in document["heads"]})
    if len(modules) > 1:
        raise SpartaError(
            f"{adapter}: its head has several modules ({', '.join(modules)}: an encoder's pooler and classifier); "
            "merging keeps one linear head per task, so it takes decoder classifiers"
        )
    for tensor, shape in document["heads"].items():
        if tensor.rsplit(".", 1)[-1] not in ("weight", "bias") or len(shape) > 2:
            raise SpartaError(
                f"{adapter}: head tensor {tensor!r} is not a linear head; only linear heads merge"
            )
    return AdapterSource(adapter, run_dir, document, info, name, objective)


def _bare_objective(document: dict) -> str:
    """A bare adapter's objective, from the class of the model it was saved from (a causal LM: SFT)."""
    causal = str(document["base_model"].get("class") or "").endswith("ForCausalLM")
    return LANGUAGE_MODELLING if causal else "classification"


def _clean_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-") or "task"
    return name if NAME.fullmatch(name) else f"t{name}"


def read_sparse(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]]:
    """{parameter name: (shape, phi, float32 deltas)}: phi itself matters here, since a delta that is exactly
    zero is still a selected position for the overlap statistics."""
    return read_sparse_deltas(Path(path))


def read_head(source: AdapterSource) -> dict[str, torch.Tensor]:
    """The head's tensors as {"weight": (C, d)[, "bias": (C,)]}, float32."""
    heads = read_heads(source.path)
    return {n.rsplit(".", 1)[-1]: heads[n] for n in source.head}


def check_same_base(sources: list[AdapterSource]) -> None:
    """Raise a SpartaError naming the first tensor whose stored fingerprint differs between two adapters."""
    ref = sources[0]
    ref_fp = ref.document["base_model"].get("fingerprint") or {}
    for other in sources[1:]:
        fp = other.document["base_model"].get("fingerprint") or {}
        common = [n for n in ref_fp if n in fp]
        if not common:
            raise SpartaError(
                f"adapters {ref.path} and {other.path} share no base-model tensor: different architectures"
            )
        for name in common:
            (s1, _, h1), (s2, _, h2) = ref_fp[name], fp[name]
            if list(s1) != list(s2) or (h1 and h2 and h1 != h2):
                what = "shape" if list(s1) != list(s2) else "values"
                raise SpartaError(
                    f"adapters {ref.path} and {other.path} were trained on different base models: tensor "
                    f"{name!r} differs ({what}); merge only adapters trained on the same base model"
                )
