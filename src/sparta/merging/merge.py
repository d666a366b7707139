"""Merging SpaRTA adapters into one multi-head model (paper section 8, Table 6).

Adapters trained on the same base model (their stored base-model fingerprints must agree) are added into one
backbone, ``W = W0 + sum_i w_i * scatter(phi_i, delta_i)`` (the paper's rule, `Strategy("sum")`), or combined by
another rule of `sparta.merging.strategies` (mean, TIES, DARE), and each task keeps its own fully trained head. The
merged directory (layout in `sparta.runs.layout`) is a standalone Hugging Face checkpoint of the base *causal
LM* with the merged weights (``AutoModel`` loads the bare transformer from it, ``AutoModelForCausalLM`` the LM),
its tokenizer, one ``heads/<task>.safetensors`` per task and ``merged.json`` describing the tasks (labels, prompt
settings, where each came from), the rule, how the adapters interact (`sparta.merging.interactions`) and how much
of each task's delta mass survives each rule. It opens with
`sparta.runs.open_model` like any other directory. Language-modelling (SFT) adapters merge into one causal LM
with no heads instead (`sparta.merging.causal`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer

from sparta.adapter.fingerprint import check_fingerprint, model_fingerprint
from sparta.errors import SpartaError
from sparta.fileio import write_json
from sparta.merging.causal import add_lm_heads, check_one_objective, lm_entry, prepare_lm_head
from sparta.merging.interactions import interaction_stats, interaction_warnings, strategy_warnings
from sparta.merging.sources import NAME, AdapterSource, check_same_base, open_adapter, read_head, read_sparse
from sparta.merging.strategies import STRATEGIES, Sparse, Strategy, merge_sparse
from sparta.models import load_model, load_tokenizer, quiet_transformers, resolve_model
from sparta.runs import evaluate, open_model
from sparta.runs.causal import LANGUAGE_MODELLING
from sparta.runs.export import write_generation_config
from sparta.runs.layout import (
    HEAD_METADATA_KEY,
    HEADS_DIR,
    MERGED_FILE,
    MERGED_FORMAT,
    TOKENIZER_DIR,
    prepare_dir,
)
from sparta.tasks import build_task


def tokenizer_for(source: AdapterSource, resolved) -> Any:
    if source.run_dir is not None and (source.run_dir / TOKENIZER_DIR).is_dir():
        tok = AutoTokenizer.from_pretrained(str(source.run_dir / TOKENIZER_DIR))
        return tok
    return load_tokenizer(resolved)


def _resolve_base(sources: list[AdapterSource], model: str | None):
    name = model or sources[0].base_model
    if not name:
        raise SpartaError(f"{sources[0].path} does not record its base model; pass --model")
    return resolve_model(name)


def task_entry(source: AdapterSource, weight: float, head_file: str) -> dict[str, Any]:
    info, doc = source.info, source.document
    n = source.num_labels
    names = info.get("label_names") or [str(i) for i in range(n)]
    words = None
    if info.get("task"):
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


@dataclass
class Prepared:
    """What a merge reads before it writes anything: the adapters, the base causal LM (float32, W0 everywhere
    but the untied LM head of SFT merges) and each adapter's sparse deltas."""

    sources: list[AdapterSource]
    output: Path
    model: str | None  # --model as given
    resolved: Any  # the base model's registry entry / path
    backbone: nn.Module
    sparse: list[Sparse]
    causal: bool
    original_head: torch.Tensor | None  # SFT merges whose adapters change the LM head: its pretrained weight

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]


def prepare_merge(
    sources: list[AdapterSource], output: str | Path, *, model: str | None = None, overwrite: bool = False
) -> Prepared:
    """Check the adapters against each other and the base model, empty the output dir, load the base causal LM
    and read the deltas."""
    check_same_base(sources)
    causal = check_one_objective(sources)
    output = Path(output)
    prepare_dir(output, overwrite, MERGED_FILE)
    resolved = _resolve_base(sources, model)
    with quiet_transformers():
        backbone = load_model(resolved, task="causal-lm", dtype="float32")
    sparse = [read_sparse(s.path) for s in sources]
    original_head = prepare_lm_head(backbone, sources, sparse) if causal else None
    actual = model_fingerprint(backbone)
    for s, sp in zip(sources, sparse, strict=True):
        check_fingerprint(s.document["base_model"].get("fingerprint") or {}, actual, required=list(sp))
    return Prepared(sources, output, model, resolved, backbone, sparse, causal, original_head)


@torch.no_grad()
def apply_strategy(
    backbone: nn.Module, sparse: list[Sparse], weights: list[float], strategy: Strategy
) -> None:
    """Add the adapters' deltas into `backbone`, which holds W0 at their positions: ``sum`` as the paper (and
    sparta before the other rules) does, one weighted ``index_add_`` per adapter in the parameter's dtype; any
    other rule writes ``W0 + merged`` from `merge_sparse`."""
    if strategy.name == "sum":
        for sp, w in zip(sparse, weights, strict=True):
            for name, (_, flat, values) in sp.items():
                param = backbone.get_parameter(name)
                param.view(-1).index_add_(0, flat, (w * values).to(param.dtype))
        return
    merged = merge_sparse(sparse, weights, strategy)
    for name, (union, values) in merged.deltas.items():
        param = backbone.get_parameter(name)
        param.view(-1).index_add_(0, union, values.to(param.dtype))


def survival_report(
    sparse: list[Sparse], weights: list[float], names: list[str], strategy: Strategy
) -> dict[str, Any]:
    """Each task's share of its weighted delta mass that survives the chosen rule, and for reference every rule at
    the given (or default) parameters."""
    by_rule = {}
    for rule in STRATEGIES:
        other = strategy if rule == strategy.name else dataclasses.replace(strategy, name=rule)
        shares = merge_sparse(sparse, weights, other).survival
        by_rule[rule] = {"strategy": other.describe(), "tasks": dict(zip(names, shares, strict=True))}
    return {"strategy": strategy.describe(), "tasks": by_rule[strategy.name]["tasks"], "by_strategy": by_rule}


def write_merged(
    prep: Prepared, weights: list[float], strategy: Strategy, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Save the merged backbone (already merged in `prep.backbone`), tokenizer, heads and merged.json."""
    sources, output, backbone = prep.sources, prep.output, prep.backbone
    tokenizer = tokenizer_for(sources[0], prep.resolved)
    backbone.config.pad_token_id = tokenizer.pad_token_id
    if prep.causal:
        write_generation_config(backbone, tokenizer)
    backbone.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    if prep.causal:
        tasks = [lm_entry(s, w) for s, w in zip(sources, weights, strict=True)]
    else:
        tasks = _write_heads(output, sources, weights)
    pairs = interaction_stats(prep.sparse, prep.names)
    # the adapters' training precision, when they agree: the merged model is then evaluated in it by default
    trained_in = {s.info.get("precision") for s in sources}
    precision = {"precision": trained_in.pop()} if len(trained_in) == 1 and None not in trained_in else {}
    document = {
        "format": MERGED_FORMAT,
        "kind": "sparta-merged",
        **({"objective": LANGUAGE_MODELLING} if prep.causal else {}),
        "base_model": prep.model or sources[0].base_model,
        "base_model_path": str(prep.resolved.path),
        "pad_token_id": tokenizer.pad_token_id,
        "strategy": strategy.describe(),
        "tasks": tasks,
        "interactions": pairs,
        "survival": survival_report(prep.sparse, weights, prep.names, strategy),
        "warnings": interaction_warnings(sources, pairs) + strategy_warnings(strategy, pairs),
        **precision,
        **(extra or {}),
    }
    write_json(output / MERGED_FILE, document)
    return document


def merge_adapters(
    adapters: list[str | Path],
    output: str | Path,
    *,
    weights: list[float] | None = None,
    names: list[str] | None = None,
    model: str | None = None,
    overwrite: bool = False,
    strategy: Strategy | None = None,
) -> dict[str, Any]:
    """Merge SpaRTA adapters into one multi-head model directory (SFT adapters: one causal LM) by `strategy`
    (default: the paper's weighted sum); returns the merged.json document."""
    strategy = strategy or Strategy()
    sources = open_sources(adapters, names)
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise SpartaError(f"--weights has {len(weights)} values for {len(sources)} adapters")
    prep = prepare_merge(sources, output, model=model, overwrite=overwrite)
    apply_strategy(prep.backbone, prep.sparse, weights, strategy)
    if prep.original_head is not None:  # fully trained LM heads: their weighted changes, whatever the rule
        add_lm_heads(prep.backbone, sources, weights, prep.original_head)
    return write_merged(prep, weights, strategy)


def open_sources(adapters: list[str | Path], names: list[str] | None) -> list[AdapterSource]:
    """The adapters, each named by `names` or its task (two runs of one task: task, task-2, ...)."""
    if len(adapters) < 1:
        raise SpartaError("give at least one adapter to merge")
    sources = [open_adapter(p) for p in adapters]
    if names is not None:
        if len(names) != len(sources) or not all(NAME.fullmatch(n) for n in names):
            raise SpartaError(
                f"--names needs {len(sources)} names of letters, digits, '_' or '-', got {names}"
            )
        for s, n in zip(sources, names, strict=True):
            s.name = n
    seen: dict[str, int] = {}
    for s in sources:
        seen[s.name] = seen.get(s.name, 0) + 1
        s.name = s.name if seen[s.name] == 1 else f"{s.name}-{seen[s.name]}"
    return sources


def _write_heads(output: Path, sources: list[AdapterSource], weights: list[float]) -> list[dict[str, Any]]:
    """heads/<task>.safetensors for each classifier adapter; their merged.json entries."""
    (output / HEADS_DIR).mkdir()
    tasks = []
    for s, w in zip(sources, weights, strict=True):
        entry = task_entry(s, w, f"{HEADS_DIR}/{s.name}.safetensors")
        # one metadata key holding the entry as JSON: safetensors writes the metadata map in no fixed order, and
        # merging the same adapters must give the same bytes (files written before kept one key per field)
        meta = {HEAD_METADATA_KEY: json.dumps(entry, sort_keys=True)}
        save_file(
            {k: v.contiguous() for k, v in read_head(s).items()}, str(output / entry["head_file"]), meta
        )
        tasks.append(entry)
    return tasks


def compare_with_single(
    path: str | Path,
    split: str = "test",
    data_dir: str | None = None,
    max_eval_samples: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
    single_cache: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """{task: {"merged": metrics, "single": metrics}} for every task merged from a training dir.

    `single_cache`: a folder keeping each single adapter's metrics (one JSON file per task and adapter directory,
    keyed by the directory, split, sample cap, data folder and precision), so that a grid merging the same adapters by many rules evaluates
    each adapter once; a file whose key differs is computed again and replaced."""
    merged = open_model(path, device=device)
    out: dict[str, dict[str, Any]] = {}
    for name, head in merged.tasks.items():
        if not head.known_data:
            continue
        source = head.entry["source"]
        key = {
            "source": str(Path(source).resolve()),
            "split": split,
            "max_eval_samples": max_eval_samples,
            "data_dir": data_dir,
            "precision": merged.precision.name if merged.precision is not None else "fp32",
        }
        digest = hashlib.sha1(key["source"].encode()).hexdigest()[:10]
        cached = Path(single_cache) / f"{name}-{digest}.json" if single_cache is not None else None
        single = _cached_metrics(cached, key)
        if single is None:
            run = open_model(source, device=device)
            single = evaluate(run, None, split, data_dir, max_eval_samples, batch_size)
            del run
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                write_json(cached, {"key": key, "metrics": single})
        out[name] = {
            "merged": evaluate(merged, name, split, data_dir, max_eval_samples, batch_size),
            "single": single,
        }
    return out


def _cached_metrics(file: Path | None, key: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics stored in `file` when it was written for `key`, else None."""
    if file is None or not file.is_file():
        return None
    try:
        doc = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc.get("metrics") if isinstance(doc, dict) and doc.get("key") == key else None
