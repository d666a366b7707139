"""Re-fitting each task's head on the merged backbone (optional, beyond the paper).

Every task's deltas also move the features the other tasks' heads read. `refit_heads` trains each linear head
again, alone, on the merged backbone's last-token features of its own training examples and keeps the epoch of
best dev loss, so a head is never worse on dev than as merged. It is built from the training loop's own parts:
the objective's encoding, the shared batched forward (`forward_batches`) to compute the features once, AdamW
over the same parameter groups (`decay_groups`) and the loop's `EarlyStopping`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from sparta.errors import SpartaError
from sparta.fileio import atomic_file, write_json
from sparta.methods import decay_groups, load_trainable_state
from sparta.objectives.batching import forward_batches
from sparta.runs import Loaded, open_model
from sparta.runs.inference import encode
from sparta.runs.layout import HEAD_METADATA_KEY, MERGED_FILE, RESULTS_FILE
from sparta.tasks import load_splits
from sparta.train.stopping import EarlyStopping

logger = logging.getLogger(__name__)


def _run_train_samples(entry: dict[str, Any]) -> int | None:
    """The max_train_samples the task's adapter was trained with (None: all, or unknown)."""
    results = Path(entry["source"]) / RESULTS_FILE
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

    def dev_metrics() -> dict[str, float]:
        with torch.no_grad():
            logits = head(dev[0])
            accuracy = (logits.argmax(-1) == dev[1]).float().mean().item()
            return {"loss": F.cross_entropy(logits, dev[1]).item(), "accuracy": accuracy}

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(decay_groups(head, 0.0), lr=lr)
    stopper = EarlyStopping(patience)
    before = dev_metrics()
    stopper.update(head, 0, before, keep_state=True)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(train[1]), generator=generator).split(batch_size):
            loss = F.cross_entropy(head(train[0][idx]), train[1][idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if stopper.update(head, epoch, dev_metrics(), keep_state=True):
            break
    load_trainable_state(head, stopper.best_state)
    return {
        "lr": lr,
        "epochs_run": epoch,
        "best_epoch": stopper.best_step,
        "dev_loss_before": before["loss"],
        "dev_accuracy_before": before["accuracy"],
        "dev_loss_after": stopper.best_loss,
        "dev_accuracy_after": stopper.best_metrics["accuracy"],
    }


def _features(merged: Loaded, name: str, splits: dict, batch_size: int) -> dict[str, tuple]:
    """{split: ((N, d) last-token features, labels)} for train and dev of one task.

    Train drops over-long examples as training did; dev truncates them as evaluation does.
    """
    head = merged.head(name)
    out = {}
    for split in ("train", "dev"):
        if split == "train" and head.entry.get("max_length"):
            data = merged.objective.encode(
                splits[split],
                head.spec,
                merged.tokenizer,
                head.instruct,
                head.template,
                head.entry["max_length"],
            )
        else:
            data = encode(merged, name, splits[split])
        pooled = forward_batches(
            lambda b: {"x": merged.model.pooled(**b)},
            data,
            batch_size,
            merged.pad_id,
            head.padding_side,
            merged.device,
        )["x"]
        out[split] = (pooled, torch.tensor(data.labels, dtype=torch.long))
    return out


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
) -> dict[str, dict[str, Any]]:
    """Re-train each task's head (only the head) on the merged backbone's features of its own training data.

    The features are those of the examples its adapter was trained on (the same seed and sample size unless
    `max_train_samples` is given); the fit starts from the trained head and keeps the epoch of best dev loss
    (epoch 0: the head unchanged). The backbone is untouched; the original head is kept as
    ``heads/<task>.original.safetensors``.
    """
    path = Path(path)
    merged = open_model(path, device=device)
    if merged.kind != "merged":
        raise SpartaError(f"{path} is not a merged model directory ({MERGED_FILE} is missing)")
    if merged.causal_lm:
        raise SpartaError(f"{path} is a merge of SFT adapters: one causal LM, with no task heads to re-fit")
    document = merged.info
    report: dict[str, dict[str, Any]] = {}
    for name in tasks or list(merged.tasks):
        head = merged.head(name)
        if not head.known_data:
            raise SpartaError(
                f"task {name!r} came from a bare adapter dir (no run.json): its training data is unknown; "
                "merge training dirs to re-fit heads"
            )
        entry = head.entry
        n_train = max_train_samples or _run_train_samples(entry)
        splits = load_splits(head.spec, data_dir, seed=head.seed, max_train_samples=n_train)
        if not splits["train"] or not splits["dev"]:
            raise SpartaError(f"task {name} needs train and dev examples to re-fit its head")
        features = _features(merged, name, splits, batch_size)
        file = path / entry["head_file"]
        original = file.with_name(f"{name}.original.safetensors")
        if not original.exists():  # keep the head the adapter trained; a second re-fit starts from it again
            shutil.copyfile(file, original)
        linear = merged.model.heads[name].float().cpu()
        linear.load_state_dict(load_file(str(original)))
        stats = fit_head(
            linear,
            features["train"],
            features["dev"],
            lr=lr,
            epochs=epochs,
            patience=patience,
            seed=head.seed,
        )
        stats["train_examples"] = len(features["train"][1])
        entry["refit"] = stats
        tensors = {k: v.detach().contiguous() for k, v in linear.state_dict().items()}
        with atomic_file(file) as tmp:
            save_file(tensors, str(tmp), {HEAD_METADATA_KEY: json.dumps(entry, sort_keys=True)})
        report[name] = stats
        logger.info(
            f"  {name}: head re-fitted on {stats['train_examples']:,} examples, best epoch {stats['best_epoch']} "
            f"of {stats['epochs_run']}; dev loss {stats['dev_loss_before']:.4f} -> {stats['dev_loss_after']:.4f}, "
            f"dev accuracy {stats['dev_accuracy_before']:.4f} -> {stats['dev_accuracy_after']:.4f}"
        )
    write_json(path / MERGED_FILE, document)
    return report
