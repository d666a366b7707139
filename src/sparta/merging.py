"""Merging SpaRTA adapters into one multi-head model (paper section 8, Table 6), and exporting one adapter.

Merge. Adapters trained on the same base model (their stored base-model fingerprints must agree) are added into
one backbone, ``W = W0 + sum_i w_i * scatter(phi_i, delta_i)``, and each task keeps its own fully trained head.
The merged directory is a standalone Hugging Face checkpoint of the base *causal LM* with the merged weights
(``AutoModel`` loads the bare transformer from it, ``AutoModelForCausalLM`` the LM), its tokenizer, one
``heads/<task>.safetensors`` per task and ``merged.json`` describing the tasks (labels, prompt settings, where
each came from) and how the adapters interact (index overlap, sign conflicts, optional metrics).

Prompts. A head sees the final hidden state of the last non-padding token of *its task's* input text, formatted
exactly as in training (``sparta.tasks.format_input`` with the run's instruct flag and template). Heads whose
inputs tokenize identically share one forward pass: with a base model (raw text) and tasks reading the same
fields, a single forward serves every task, as in the paper. Instruct models wrap each task's own instruction in
the chat template, so different tasks give different token sequences and the merged model runs one forward per
distinct prompt format (still one backbone and no adapter switching). `predict_merged` does this grouping itself.

Head re-fit (optional, beyond the paper). Each task's deltas also move the features the other tasks' heads read.
`refit_heads` trains each linear head again, alone, on the merged backbone's last-token features of its own
training examples and keeps the epoch of best dev loss (never worse on dev than the head as merged).

Export. One adapter merged into its base with its head: a plain ``AutoModelForSequenceClassification`` directory
(config has nothing sparta-specific) plus the tokenizer, with the same inference cost as the base model. A
``run.json`` sidecar (ignored by transformers) lets ``sparta eval/predict`` rebuild the run's input format.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparta.adapter.io import read_adapter_config, read_heads, read_sparse_deltas
from sparta.errors import SpartaError

MERGED_FILE = "merged.json"
HEADS_DIR = "heads"
HEAD_METADATA_KEY = "sparta_task"  # a head file's metadata: its merged.json task entry, as JSON
MERGED_FORMAT = 1
RUN_FILE, ADAPTER_DIR, TOKENIZER_DIR = "run.json", "adapter", "tokenizer"  # the training output layout
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


# -- reading adapters ----------------------------------------------------------------------------------------------
@dataclass
class AdapterSource:
    """One adapter to merge: a training output dir (run.json + adapter/) or a bare adapter dir."""

    path: Path  # the adapter directory (adapter_config.json + adapter_model.safetensors)
    run_dir: Path | None  # the training output directory, when given one
    document: dict  # adapter_config.json
    info: dict  # run.json ({} for a bare adapter)
    name: str  # the task's key in the merged model

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
        info = json.loads((path / RUN_FILE).read_text())
        if info.get("method") != "sparta":
            raise SpartaError(f"{path} is a {info.get('method')!r} run; only SpaRTA adapters can be merged")
        adapter, run_dir = path / ADAPTER_DIR, path
    else:
        adapter, run_dir, info = path, None, {}
    document = read_adapter_config(adapter)
    if not document["heads"]:
        raise SpartaError(f"{adapter} has no trained head; merging keeps one head per task")
    for name, shape in document["heads"].items():
        if name.rsplit(".", 1)[-1] not in ("weight", "bias") or len(shape) > 2:
            raise SpartaError(
                f"{adapter}: head tensor {name!r} is not a linear head; only linear heads merge"
            )
    task = (info.get("task") or {}).get("name")
    name = task if task and task != "custom" else (run_dir or adapter).resolve().name
    return AdapterSource(adapter, run_dir, document, info, _clean_name(name))


def _clean_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-") or "task"
    return name if _NAME.fullmatch(name) else f"t{name}"


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


# -- how the adapters interact --------------------------------------------------------------------------------------
def interaction_stats(sparse: list[dict], names: list[str]) -> list[dict[str, Any]]:
    """Per pair of adapters: positions selected by both, their share, and sign conflicts among them."""
    pairs = []
    for i in range(len(sparse)):
        for j in range(i + 1, len(sparse)):
            a, b = sparse[i], sparse[j]
            overlap = conflicts = expected = 0.0
            for name in a.keys() & b.keys():
                (shape, ia, va), (_, ib, vb) = a[name], b[name]
                common, pa, pb = np.intersect1d(
                    ia.numpy(), ib.numpy(), assume_unique=True, return_indices=True
                )
                overlap += len(common)
                conflicts += int((va[pa].sign() * vb[pb].sign() < 0).sum())
                expected += len(ia) * len(ib) / max(1, int(np.prod(shape)))
            na, nb = sum(len(v[1]) for v in a.values()), sum(len(v[1]) for v in b.values())
            union = na + nb - overlap
            pairs.append(
                {
                    "a": names[i],
                    "b": names[j],
                    "count_a": na,
                    "count_b": nb,
                    "overlap": int(overlap),
                    "overlap_share_a": overlap / na if na else 0.0,
                    "overlap_share_b": overlap / nb if nb else 0.0,
                    "jaccard": overlap / union if union else 0.0,
                    "expected_overlap_if_independent": round(expected, 1),
                    "identical_indices": bool(na == nb == overlap),
                    "sign_conflicts": int(conflicts),
                    "sign_conflict_share": conflicts / overlap if overlap else 0.0,
                }
            )
    return pairs


def interaction_warnings(sources: list[AdapterSource], pairs: list[dict]) -> list[str]:
    out = []
    by_name = {s.name: s for s in sources}
    for p in pairs:
        a, b = by_name[p["a"]].document["config"], by_name[p["b"]].document["config"]
        if p["identical_indices"] or (a["seed"] == b["seed"] and a["density"] == b["density"]):
            out.append(
                f"{p['a']} and {p['b']} select the SAME positions (same seed {a['seed']} and density "
                f"{a['density']}): every delta lands on top of the other's; train them with different --seed"
            )
        elif p["overlap_share_a"] > 0.5 or p["overlap_share_b"] > 0.5:
            out.append(f"{p['a']} and {p['b']} share over half of their positions ({p['overlap']:,})")
    return out


# -- merge ---------------------------------------------------------------------------------------------------------
def _quiet_transformers():
    from transformers.utils import logging

    logging.set_verbosity_error()


def _prepare(output: Path, overwrite: bool, marker: str) -> None:
    if output.exists() and not output.is_dir():
        raise SpartaError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise SpartaError(f"output {output} is not empty; pass --overwrite or pick another --output")
        if not (output / marker).is_file():
            raise SpartaError(
                f"output {output} holds files sparta did not write ({marker} missing); not overwriting"
            )
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def _tokenizer_for(source: AdapterSource, resolved) -> Any:
    from transformers import AutoTokenizer

    from sparta.models import load_tokenizer

    if source.run_dir is not None and (source.run_dir / TOKENIZER_DIR).is_dir():
        tok = AutoTokenizer.from_pretrained(str(source.run_dir / TOKENIZER_DIR))
        return tok
    return load_tokenizer(resolved)


def _resolve_base(sources: list[AdapterSource], model: str | None):
    from sparta.models import resolve_model

    name = model or sources[0].base_model
    if not name:
        raise SpartaError(f"{sources[0].path} does not record its base model; pass --model")
    return resolve_model(name)


def _task_entry(source: AdapterSource, weight: float, head_file: str) -> dict[str, Any]:
    info, doc = source.info, source.document
    n = source.num_labels
    names = info.get("label_names") or [str(i) for i in range(n)]
    words = None
    if info.get("task"):
        from sparta.train.loop import build_task

        words = list(build_task(info["task"]).label_words)
    return {
        "name": source.name,
        "source": str((source.run_dir or source.path).resolve()),
        "weight": weight,
        "head_file": head_file,
        "num_labels": n,
        "label_names": list(names),
        "label_words": words or list(names),
        "task": info.get("task"),  # get_task arguments; None for a bare adapter (raw text inputs)
        "instruct": bool(info.get("instruct", False)),
        "template": info.get("template"),
        "padding_side": info.get("padding_side", "right"),
        "max_length": info.get("max_length"),
        "seed": info.get("seed", doc["config"]["seed"]),
        "adapter_seed": doc["config"]["seed"],
        "density": doc["config"]["density"],
        "deltas": source.count,
    }


def merge_adapters(
    adapters: list[str | Path],
    output: str | Path,
    *,
    weights: list[float] | None = None,
    names: list[str] | None = None,
    model: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Merge SpaRTA adapters into one multi-head model directory; returns the merged.json document."""
    from safetensors.torch import save_file

    from sparta.adapter.fingerprint import check_fingerprint, model_fingerprint
    from sparta.models import load_model

    if len(adapters) < 1:
        raise SpartaError("give at least one adapter to merge")
    sources = [open_adapter(p) for p in adapters]
    if names is not None:
        if len(names) != len(sources) or not all(_NAME.fullmatch(n) for n in names):
            raise SpartaError(
                f"--names needs {len(sources)} names of letters, digits, '_' or '-', got {names}"
            )
        for s, n in zip(sources, names, strict=True):
            s.name = n
    seen: dict[str, int] = {}
    for s in sources:  # two runs of one task: task, task-2, ...
        seen[s.name] = seen.get(s.name, 0) + 1
        s.name = s.name if seen[s.name] == 1 else f"{s.name}-{seen[s.name]}"
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise SpartaError(f"--weights has {len(weights)} values for {len(sources)} adapters")
    check_same_base(sources)
    output = Path(output)
    _prepare(output, overwrite, MERGED_FILE)

    _quiet_transformers()
    resolved = _resolve_base(sources, model)
    backbone = load_model(resolved, task="causal-lm", dtype="float32")
    actual = model_fingerprint(backbone)
    sparse = [read_sparse(s.path) for s in sources]
    for s, sp in zip(sources, sparse, strict=True):
        check_fingerprint(s.document["base_model"].get("fingerprint") or {}, actual, required=list(sp))
    with torch.no_grad():
        for sp, w in zip(sparse, weights, strict=True):
            for name, (_, flat, values) in sp.items():
                param = backbone.get_parameter(name)
                param.view(-1).index_add_(0, flat, (w * values).to(param.dtype))
    pairs = interaction_stats(sparse, [s.name for s in sources])

    tokenizer = _tokenizer_for(sources[0], resolved)
    backbone.config.pad_token_id = tokenizer.pad_token_id
    backbone.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    (output / HEADS_DIR).mkdir()
    tasks = []
    for s, w in zip(sources, weights, strict=True):
        entry = _task_entry(s, w, f"{HEADS_DIR}/{s.name}.safetensors")
        # one metadata key holding the entry as JSON: safetensors writes the metadata map in no fixed order, and
        # merging the same adapters must give the same bytes (files written before kept one key per field)
        meta = {HEAD_METADATA_KEY: json.dumps(entry, sort_keys=True)}
        save_file(
            {k: v.contiguous() for k, v in read_head(s).items()}, str(output / entry["head_file"]), meta
        )
        tasks.append(entry)
    document = {
        "format": MERGED_FORMAT,
        "kind": "sparta-merged",
        "base_model": model or sources[0].base_model,
        "base_model_path": str(resolved.path),
        "pad_token_id": tokenizer.pad_token_id,
        "tasks": tasks,
        "interactions": pairs,
        "warnings": interaction_warnings(sources, pairs),
    }
    (output / MERGED_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return document


# -- the multi-head model -------------------------------------------------------------------------------------------
def pool_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state (B, d) of each row's last position where `mask` is 1 (right or left padding)."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    last = (positions * mask.to(positions.dtype)).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class MultiHeadModel(nn.Module):
    """A merged backbone (bare transformer) and one linear head per task: forward -> {task: logits}."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Linear], pad_token_id: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.pad_token_id = pad_token_id

    @classmethod
    def from_dir(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> MultiHeadModel:
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        document = read_merged(path)
        _quiet_transformers()
        backbone = AutoModel.from_pretrained(str(path), dtype=dtype)
        heads = {}
        for task in document["tasks"]:
            tensors = load_file(str(path / task["head_file"]))
            weight = tensors["weight"]
            head = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors, dtype=dtype)
            with torch.no_grad():
                head.weight.copy_(weight)
                if "bias" in tensors:
                    head.bias.copy_(tensors["bias"])
            heads[task["name"]] = head
        return cls(backbone, heads, document.get("pad_token_id")).eval()

    def pooled(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (
                (input_ids != self.pad_token_id).long() if self.pad_token_id is not None else None
            )
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return pool_last(hidden, mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        tasks: list[str] | None = None,
        **kw,
    ) -> dict[str, torch.Tensor]:
        """One backbone pass; every head (or those in `tasks`) applied to the pooled state."""
        pooled = self.pooled(input_ids, attention_mask, **kw)
        return {t: self.heads[t](pooled) for t in (tasks or list(self.heads))}


# -- using a merged directory ---------------------------------------------------------------------------------------
def is_merged_dir(path: str | Path) -> bool:
    return (Path(path) / MERGED_FILE).is_file()


def read_merged(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MERGED_FILE
    if not file.is_file():
        raise SpartaError(f"{path} is not a merged model directory ({MERGED_FILE} is missing)")
    try:
        document = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise SpartaError(f"{file} is corrupt: {err}") from None
    if document.get("kind") != "sparta-merged" or document.get("format") != MERGED_FORMAT:
        raise SpartaError(f"{file} is not a sparta merged-model description (format {MERGED_FORMAT})")
    return document


@dataclass
class MergedModel:
    """A loaded merged directory: the multi-head model, its tokenizer, the task specs and merged.json."""

    model: MultiHeadModel
    tokenizer: Any
    specs: dict[str, Any]  # task name -> TaskSpec
    document: dict[str, Any]
    device: torch.device

    def task(self, name: str) -> dict[str, Any]:
        for t in self.document["tasks"]:
            if t["name"] == name:
                return t
        raise SpartaError(f"the merged model has no task {name!r}; its tasks: {', '.join(self.specs)}")


def _spec_for(task: dict[str, Any]):
    from sparta.tasks import TaskSpec
    from sparta.train.loop import build_task

    if task.get("task"):
        return dataclasses.replace(build_task(task["task"]), name=task["name"])
    names = tuple(task["label_names"])
    return TaskSpec(
        task["name"], len(names), ("text",), "label", names, names, "Classify the following text."
    )


def load_merged(path: str | Path, device: str | None = None) -> MergedModel:
    """Load a merged directory for inference."""
    from transformers import AutoTokenizer

    from sparta.train.loop import pick_device

    document = read_merged(path)
    dev, dtype = pick_device(device, None)
    model = MultiHeadModel.from_dir(path, dtype=dtype).to(dev)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    specs = {t["name"]: _spec_for(t) for t in document["tasks"]}
    return MergedModel(model, tokenizer, specs, document, dev)


def _encode(merged: MergedModel, name: str, examples: list[dict], truncate: bool = True):
    from sparta.train import data as D

    task = merged.task(name)
    context = getattr(merged.model.backbone.config, "max_position_embeddings", None)
    return D.encode_split(
        examples, merged.specs[name], merged.tokenizer, task["instruct"], task["template"], context, truncate
    )


@torch.no_grad()
def _logits(merged: MergedModel, data, tasks: list[str], padding_side: str, batch_size: int) -> dict:
    """{task: (N, C) float32 logits} from one backbone pass per batch, shared by `tasks`."""
    from sparta.train import data as D

    pad = merged.tokenizer.pad_token_id
    out = {t: torch.empty(len(data), merged.task(t)["num_labels"]) for t in tasks}
    for idx, batch in D.iter_batches(data, D.sorted_batches(data.lengths, batch_size), pad, padding_side):
        batch.pop("labels")
        logits = merged.model(**{k: v.to(merged.device) for k, v in batch.items()}, tasks=tasks)
        for t in tasks:
            out[t][idx] = logits[t].float().cpu()
    return out


def prompt_groups(merged: MergedModel, examples: dict[str, list[dict]]) -> list[tuple[list[str], Any]]:
    """[(tasks, encoded inputs)]: tasks whose inputs tokenize (and pad) identically share one forward pass."""
    groups: dict[tuple, tuple[list[str], Any]] = {}
    for name, exs in examples.items():
        data = _encode(merged, name, exs)
        key = (tuple(map(tuple, data.input_ids)), merged.task(name)["padding_side"])
        groups.setdefault(key, ([], data))[0].append(name)
    return list(groups.values())


def predict_merged(
    merged: MergedModel, texts: list[str], tasks: list[str] | None = None, batch_size: int = 32
) -> list[dict[str, dict[str, Any]]]:
    """For each input: {task: {"label", "probabilities"}}, one backbone pass per distinct prompt format."""
    from sparta.train.inference import examples_from_texts

    names = tasks or list(merged.specs)
    examples = {n: examples_from_texts(merged.specs[merged.task(n)["name"]], texts) for n in names}
    counts = {len(v) for v in examples.values()}
    if len(counts) != 1:
        raise SpartaError("the tasks read different numbers of text fields; give one JSON object per example")
    results: list[dict[str, dict[str, Any]]] = [{} for _ in range(counts.pop())]
    for group, data in prompt_groups(merged, examples):
        logits = _logits(merged, data, group, merged.task(group[0])["padding_side"], batch_size)
        for t in group:
            labels = merged.task(t)["label_names"]
            for i, p in enumerate(logits[t].softmax(-1)):
                results[i][t] = {
                    "label": labels[int(p.argmax())],
                    "probabilities": {n: float(v) for n, v in zip(labels, p, strict=True)},
                }
    return results


def evaluate_merged(
    merged: MergedModel,
    task: str,
    split: str = "test",
    data_dir: str | None = None,
    max_eval_samples: int | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Loss and the task's metrics of one head of the merged model, on inputs formatted as in training."""
    from sparta.tasks import compute_metrics, load_splits

    entry = merged.task(task)
    if not entry.get("task"):
        raise SpartaError(
            f"task {task!r} came from a bare adapter dir (no run.json): its data is unknown; merge training dirs"
        )
    if split not in ("train", "dev", "test"):
        raise SpartaError(f"unknown split {split!r}; choose train, dev or test")
    spec = merged.specs[task]
    splits = load_splits(spec, data_dir, seed=entry.get("seed") or 0, max_eval_samples=max_eval_samples)
    if not splits[split]:
        raise SpartaError(f"task {task} has no {split} examples")
    data = _encode(merged, task, splits[split])
    logits = _logits(merged, data, [task], entry["padding_side"], batch_size)[task]
    labels = torch.tensor(data.labels, dtype=torch.long)
    loss = F.cross_entropy(logits, labels).item()
    return {"loss": loss, **compute_metrics(spec, logits, labels, loss=loss)}


def compare_with_single(
    path: str | Path,
    split: str = "test",
    data_dir: str | None = None,
    max_eval_samples: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
) -> dict[str, dict[str, Any]]:
    """{task: {"merged": metrics, "single": metrics}} for every task merged from a training dir."""
    from sparta.train import evaluate_run, load_run

    merged = load_merged(path, device)
    out: dict[str, dict[str, Any]] = {}
    for entry in merged.document["tasks"]:
        if not entry.get("task"):
            continue
        name = entry["name"]
        run = load_run(entry["source"], device=device)
        out[name] = {
            "merged": evaluate_merged(merged, name, split, data_dir, max_eval_samples, batch_size),
            "single": evaluate_run(run, split, data_dir, max_eval_samples, batch_size),
        }
        del run
    return out


# -- re-fitting heads on the merged backbone -----------------------------------------------------------------------
@torch.no_grad()
def _pooled_features(merged: MergedModel, data, padding_side: str, batch_size: int) -> torch.Tensor:
    """(N, d) float32 last-token hidden states of the merged backbone, in `data`'s order."""
    from sparta.train import data as D

    pad = merged.tokenizer.pad_token_id
    out = None
    for idx, batch in D.iter_batches(data, D.sorted_batches(data.lengths, batch_size), pad, padding_side):
        batch.pop("labels")
        pooled = merged.model.pooled(**{k: v.to(merged.device) for k, v in batch.items()}).float().cpu()
        if out is None:
            out = torch.empty(len(data), pooled.shape[-1])
        out[idx] = pooled
    return out


def _run_train_samples(entry: dict[str, Any]) -> int | None:
    """The max_train_samples the task's adapter was trained with (None: all, or unknown)."""
    results = Path(entry["source"]) / "results.json"
    try:
        return json.loads(results.read_text())["config"].get("max_train_samples")
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def fit_head(
    head: nn.Linear,
    train: tuple[torch.Tensor, torch.Tensor],
    dev: tuple[torch.Tensor, torch.Tensor],
    *,
    lr: float = 1e-3,
    epochs: int = 50,
    patience: int = 5,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Train `head` in place on cached features (AdamW, minibatches), keeping the state of best dev loss.

    Epoch 0 is the head as given: when no epoch beats its dev loss the head is left unchanged.
    """

    def dev_metrics() -> tuple[float, float]:
        with torch.no_grad():
            logits = head(dev[0])
            return F.cross_entropy(logits, dev[1]).item(), (logits.argmax(-1) == dev[1]).float().mean().item()

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    loss0, acc0 = dev_metrics()
    best = (loss0, 0, acc0, {k: v.clone() for k, v in head.state_dict().items()})
    since_best = 0
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(train[1]), generator=generator).split(batch_size):
            loss = F.cross_entropy(head(train[0][idx]), train[1][idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        dev_loss, dev_acc = dev_metrics()
        if dev_loss < best[0]:
            best, since_best = (
                (dev_loss, epoch, dev_acc, {k: v.clone() for k, v in head.state_dict().items()}),
                0,
            )
        else:
            since_best += 1
            if since_best >= patience:
                break
    head.load_state_dict(best[3])
    return {
        "lr": lr,
        "epochs_run": epoch,
        "best_epoch": best[1],
        "dev_loss_before": loss0,
        "dev_accuracy_before": acc0,
        "dev_loss_after": best[0],
        "dev_accuracy_after": best[2],
    }


def refit_heads(
    path: str | Path,
    *,
    tasks: list[str] | None = None,
    data_dir: str | None = None,
    max_train_samples: int | None = None,
    lr: float = 1e-3,
    epochs: int = 50,
    patience: int = 5,
    batch_size: int = 32,
    device: str | None = None,
    log=print,
) -> dict[str, dict[str, Any]]:
    """Re-train each task's head (only the head) on the merged backbone's features of its own training data.

    Every task's deltas shift the hidden states all heads read; a head fitted against its single-task backbone
    then reads features that moved. This fits each linear head again on the merged model's last-token features
    of the examples its adapter was trained on (the same seed and sample size unless `max_train_samples` is
    given), starting from the trained head and keeping the epoch of best dev loss (epoch 0: the head unchanged).
    The backbone is untouched; the original head is kept as ``heads/<task>.original.safetensors``.
    """
    from safetensors.torch import load_file, save_file

    from sparta.tasks import load_splits
    from sparta.train import data as D

    path = Path(path)
    merged = load_merged(path, device)
    document = merged.document
    names = tasks or [t["name"] for t in document["tasks"]]
    report: dict[str, dict[str, Any]] = {}
    for name in names:
        entry = merged.task(name)
        if not entry.get("task"):
            raise SpartaError(
                f"task {name!r} came from a bare adapter dir (no run.json): its training data is unknown; "
                "merge training dirs to re-fit heads"
            )
        n_train = max_train_samples or _run_train_samples(entry)
        splits = load_splits(
            merged.specs[name], data_dir, seed=entry.get("seed") or 0, max_train_samples=n_train
        )
        if not splits["train"] or not splits["dev"]:
            raise SpartaError(f"task {name} needs train and dev examples to re-fit its head")
        features = {}
        # train drops over-long examples as training did; dev truncates them as evaluation does
        for split in ("train", "dev"):
            if split == "train" and entry.get("max_length"):
                data = D.encode_split(splits[split], merged.specs[name], merged.tokenizer, entry["instruct"],
                                      entry["template"], entry["max_length"])  # fmt: skip
            else:
                data = _encode(merged, name, splits[split])
            x = _pooled_features(merged, data, entry["padding_side"], batch_size)
            features[split] = (x, torch.tensor(data.labels, dtype=torch.long))
        file = path / entry["head_file"]
        original = file.with_name(f"{name}.original.safetensors")
        if not original.exists():  # keep the head the adapter trained; a second re-fit starts from it again
            shutil.copyfile(file, original)
        head = merged.model.heads[name].float().cpu()
        head.load_state_dict(load_file(str(original)))
        stats = fit_head(head, features["train"], features["dev"], lr=lr, epochs=epochs, patience=patience,
                         seed=entry.get("seed") or 0)  # fmt: skip
        stats["train_examples"] = len(features["train"][1])
        entry["refit"] = stats
        tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
        save_file(tensors, str(file), {HEAD_METADATA_KEY: json.dumps(entry, sort_keys=True)})
        report[name] = stats
        log(
            f"  {name}: head re-fitted on {stats['train_examples']:,} examples, best epoch {stats['best_epoch']} "
            f"of {stats['epochs_run']}; dev loss {stats['dev_loss_before']:.4f} -> {stats['dev_loss_after']:.4f}, "
            f"dev accuracy {stats['dev_accuracy_before']:.4f} -> {stats['dev_accuracy_after']:.4f}"
        )
    (path / MERGED_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return report


# -- export --------------------------------------------------------------------------------------------------------
def export_adapter(
    adapter: str | Path, output: str | Path, *, model: str | None = None, overwrite: bool = False
) -> Path:
    """Merge one adapter and its head into a plain AutoModelForSequenceClassification directory."""
    from sparta import SpartaModel
    from sparta.models import load_model

    source = open_adapter(adapter)
    output = Path(output)
    _prepare(output, overwrite, "config.json")
    _quiet_transformers()
    resolved = _resolve_base([source], model)
    net = load_model(resolved, task="classification", num_labels=source.num_labels, dtype="float32")
    tokenizer = _tokenizer_for(source, resolved)
    net.config.pad_token_id = tokenizer.pad_token_id
    net = SpartaModel.from_pretrained(net, source.path).merge_and_unload()
    labels = source.info.get("label_names") or [str(i) for i in range(source.num_labels)]
    net.config.id2label = dict(enumerate(labels))
    net.config.label2id = {name: i for i, name in enumerate(labels)}
    net.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    if source.info:  # lets `sparta eval/predict` rebuild the run's input format; transformers ignores it
        sidecar = {**source.info, "method": "export", "exported_from": str(source.run_dir.resolve())}
        (output / RUN_FILE).write_text(json.dumps(sidecar, indent=2) + "\n")
    return output
