"""Using a loaded model: `evaluate` one task on a split, `predict` labels for inputs.

A causal LM (an SFT run) is evaluated by its objective: the mean NLL per answer token and, where the task
scores generations (or `generate=True`), the exact match of greedy completions; it predicts no labels.

Inputs are formatted exactly as in training (the task's prompt, the run's instruct flag and template) and
truncated to the model's context from the left, keeping the end where an instruct prompt's generation marker
sits. Every forward goes through `sparta.objectives.batching.forward_batches`, the same longest-first batching
the training loop evaluates with. A merged model's tasks whose inputs tokenize identically share one forward
pass (with a base model and tasks reading the same fields, one pass serves every head, as in the paper);
instruct models wrap each task's own instruction in the chat template, so there each task runs its own pass.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from sparta.errors import SpartaError
from sparta.objectives.batching import forward_batches
from sparta.runs.causal import run_reference
from sparta.runs.loaded import Loaded
from sparta.tasks import load_splits

SPLITS = ("train", "dev", "test")


def encode(loaded: Loaded, name: str, examples: list[dict], truncate: bool = True):
    """Task `name`'s inputs for `examples`, tokenised as in training."""
    head = loaded.head(name)
    return loaded.objective.encode(
        examples,
        head.spec,
        loaded.tokenizer,
        head.instruct,
        head.template,
        loaded.context,
        truncate,
        encoder=loaded.encoder,
    )


def scores(loaded: Loaded, data, tasks: list[str], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """{task: (N, C) float32 logits} for encoded inputs that `tasks` share, one backbone pass per batch."""
    side = loaded.head(tasks[0]).padding_side
    with loaded.autocast():
        return forward_batches(loaded.forward(tasks), data, batch_size, loaded.pad_id, side, loaded.device)


def evaluate(
    loaded: Loaded,
    task: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    max_eval_samples: int | None = None,
    batch_size: int = 32,
    *,
    generate: bool | None = None,
    max_new_tokens: int = 256,
    records: list | None = None,
) -> dict[str, float]:
    """The loss and the task's metrics of one task (the only one, unless named) on one split. A causal LM also
    generates when `generate` (None: when its task scores generations, e.g. GSM8K's exact match). `records`:
    filled with each example's scores (`sparta.objectives.examples`)."""
    head = loaded.head(task)
    if not head.known_data:
        raise SpartaError(
            f"task {head.name!r} came from a bare adapter dir (no run.json): its data is unknown; merge training dirs"
        )
    if split not in SPLITS:
        raise SpartaError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if generate and not loaded.causal_lm:
        raise SpartaError(f"task {head.spec.name} is a classification task; only causal LMs generate")
    splits = load_splits(head.spec, data_dir, seed=head.seed, max_eval_samples=max_eval_samples)
    if not splits[split]:
        raise SpartaError(f"task {head.spec.name} has no {split} examples")
    if loaded.causal_lm:
        return _evaluate_causal(loaded, head, splits[split], batch_size, generate, max_new_tokens, records)
    return evaluate_encoded(loaded, head.name, encode(loaded, head.name, splits[split]), batch_size, records)


def evaluate_encoded(
    loaded: Loaded, task: str, data, batch_size: int = 32, records: list | None = None
) -> dict[str, float]:
    """A classifier task's loss and metrics on inputs already encoded by `encode` (what `evaluate` ends with; a
    caller evaluating many versions of one model on the same examples encodes them once)."""
    logits = scores(loaded, data, [task], batch_size)[task]
    return loaded.objective.metrics(loaded.head(task).spec, logits, data.labels, records, data)


def _evaluate_causal(
    loaded: Loaded,
    head,
    examples: list[dict],
    batch_size: int,
    generate: bool | None,
    max_new_tokens: int,
    records: list | None = None,
) -> dict[str, float]:
    """A causal LM's objective (language modelling, preference pairs) on examples encoded as its run encoded
    them (the objective's options from run.json); a preference run is measured against its own reference."""
    objective = loaded.objective
    options = objective.saved_encode_options(loaded.info)
    data = objective.encode(
        examples, head.spec, loaded.tokenizer, head.instruct, head.template, loaded.context, True, **options
    )
    method = None
    if loaded.kind == "run" and objective.uses_reference:
        dtype = next(loaded.model.parameters()).dtype
        method = run_reference(loaded.model, loaded.info, dtype, loaded.device)
    objective.prepare_evaluation(loaded.model, method, data)
    if generate is None:
        generate = bool(getattr(head.spec, "generation_metric", False))
    with loaded.autocast():
        return objective.evaluate(
            loaded.model,
            data,
            head.spec,
            batch_size,
            loaded.pad_id,
            head.padding_side,
            loaded.device,
            generate=generate,
            tokenizer=loaded.tokenizer,
            max_new_tokens=max_new_tokens,
            records=records,
        )


def examples_from_texts(task, texts: list[str]) -> list[dict]:
    """CLI inputs to examples: a JSON object is one example; else plain strings fill the task's text fields in order."""
    if texts and all(t.lstrip().startswith("{") for t in texts):
        try:
            examples = [json.loads(t) for t in texts]
        except json.JSONDecodeError as err:
            raise SpartaError(f"input is not a valid JSON example: {err}") from None
        for example in examples:
            missing = [f for f in task.text_fields if f not in example]
            if missing:
                raise SpartaError(
                    f"input {json.dumps(example)} has no field {', '.join(map(repr, missing))}; task {task.name} "
                    f"reads {', '.join(task.text_fields)} (the input has {', '.join(example) or 'no fields'})"
                )
        return [example | {"label": 0} for example in examples]
    k = len(task.text_fields)
    if not texts or len(texts) % k:
        raise SpartaError(
            f"task {task.name} takes {k} text(s) per example ({', '.join(task.text_fields)}); got {len(texts)}"
        )
    return [
        dict(zip(task.text_fields, texts[i : i + k], strict=True)) | {"label": 0}
        for i in range(0, len(texts), k)
    ]


def prompt_groups(loaded: Loaded, examples: dict[str, list[dict]]) -> list[tuple[list[str], Any]]:
    """[(tasks, encoded inputs)]: tasks whose inputs tokenize (and pad) identically share one forward pass."""
    groups: dict[tuple, tuple[list[str], Any]] = {}
    for name, exs in examples.items():
        data = encode(loaded, name, exs)
        key = (tuple(map(tuple, data.input_ids)), loaded.head(name).padding_side)
        groups.setdefault(key, ([], data))[0].append(name)
    return list(groups.values())


def _label(names: list[str], probs: torch.Tensor) -> dict[str, Any]:
    return {
        "label": names[int(probs.argmax())],
        "probabilities": {n: float(v) for n, v in zip(names, probs, strict=True)},
    }


def predict_tasks(
    loaded: Loaded, texts: list[str], tasks: list[str] | None = None, batch_size: int = 32
) -> list[dict[str, dict[str, Any]]]:
    """For each input: {task: {"label", "probabilities"}} for every task (or those named), one backbone pass
    per distinct prompt format."""
    check_classifier(loaded)
    names = tasks or list(loaded.tasks)
    examples = {n: examples_from_texts(loaded.head(n).spec, texts) for n in names}
    counts = {len(v) for v in examples.values()}
    if len(counts) != 1:
        raise SpartaError("the tasks read different numbers of text fields; give one JSON object per example")
    results: list[dict[str, dict[str, Any]]] = [{} for _ in range(counts.pop())]
    for group, data in prompt_groups(loaded, examples):
        logits = scores(loaded, data, group, batch_size)
        for t in group:
            labels = list(loaded.head(t).spec.label_names)
            for i, p in enumerate(logits[t].softmax(-1)):
                results[i][t] = _label(labels, p)
    return results


def predict(
    loaded: Loaded, examples: list[dict], task: str | None = None, batch_size: int = 32
) -> list[dict]:
    """For each example of one task: the predicted label name and the probability of every label."""
    check_classifier(loaded)
    head = loaded.head(task)
    data = encode(loaded, head.name, examples)
    logits = scores(loaded, data, [head.name], batch_size)[head.name]
    names = list(head.spec.label_names)
    return [_label(names, p) for p in logits.softmax(-1)]


def check_classifier(loaded: Loaded) -> None:
    """A SpartaError when `loaded` is a causal LM, which answers by generating, not with labels."""
    if loaded.causal_lm:
        raise SpartaError(
            "this is a causal LM (an SFT run or a base model), not a classifier; use `sparta generate`"
        )
