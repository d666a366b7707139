"""Task specifications: the GLUE tasks, IMDB and MMLU of the paper (Table 2), plus user-defined custom tasks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparta.errors import SpartaError
from sparta.tasks import labels as L
from sparta.tasks.files import DATA_SUFFIXES, read_located

YES_NO = "Respond Yes or No."
METRICS = ("accuracy", "mcc", "f1")  # implemented in sparta.tasks.metrics


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to load, prompt and score one sequence classification task.

    Labels are ints in ``range(num_labels)``; ``label_words[i]`` is the word an instruct model answers for label i
    (used to initialise the classification head), ``label_names[i]`` its human name.
    Split layout: ``train_splits`` are concatenated into the training pool; dev is read from ``dev_splits`` when
    given, else ``dev_size`` examples are carved from ``dev_from`` ("train" or "test") with a fixed seed;
    ``test_splits`` are concatenated into the test set. Split names are file stems / HF split names.
    """

    name: str
    num_labels: int
    text_fields: tuple[str, ...]
    label_field: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]
    instruction: str
    metrics: tuple[str, ...] = ("accuracy",)
    max_length: int = 256
    dev_size: int = 1000
    train_cap: int = 100_000
    hf_path: str = ""
    hf_name: str | None = None
    train_splits: tuple[str, ...] = ("train",)
    dev_splits: tuple[str, ...] = ()
    test_splits: tuple[str, ...] = ("validation",)
    dev_from: str = "train"
    instruction_after: bool = False  # put the instruction after the text (MMLU) instead of before it
    data_files: tuple[tuple[str, str], ...] = ()  # custom tasks: (split, path) pairs
    label_values: tuple[str, ...] = ()  # custom tasks with string labels: raw value of each label id


def _glue(
    name: str,
    fields: tuple[str, ...],
    names: tuple[str, ...],
    words: tuple[str, ...],
    instruction: str,
    dev_size: int,
    **kw,
) -> TaskSpec:
    return TaskSpec(
        name=name,
        num_labels=len(names),
        text_fields=fields,
        label_field="label",
        label_names=names,
        label_words=words,
        instruction=instruction,
        dev_size=dev_size,
        hf_path="nyu-mll/glue",
        hf_name=name,
        **kw,
    )


# fmt: off
_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _glue("cola", ("sentence",), ("unacceptable", "acceptable"), ("No", "Yes"),
              f"Is the following sentence grammatically acceptable? {YES_NO}", 1000, metrics=("accuracy", "mcc")),
        _glue("sst2", ("sentence",), ("negative", "positive"), ("No", "Yes"),
              f"Determine if the following sentence has a positive sentiment. {YES_NO}", 1000),
        _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("No", "Yes"),
              f"Do the following two sentences mean the same thing? {YES_NO}", 408, metrics=("accuracy", "f1"),
              dev_splits=("validation",), test_splits=("test",)),
        _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("No", "Yes"),
              f"Do the following two questions ask the same thing? {YES_NO}", 5000, metrics=("accuracy", "f1")),
        _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("Yes", "No"),
              f"Does the first sentence entail the second? {YES_NO}", 300),
        _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("Yes", "No"),
              f"Does the sentence contain the answer to the question? {YES_NO}", 5000),
        _glue("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("Yes", "Maybe", "No"),
              "Does the premise entail the hypothesis? Respond Yes, Maybe or No.", 10000,
              test_splits=("validation_matched", "validation_mismatched")),
        TaskSpec("imdb", 2, ("text",), "label", ("neg", "pos"), ("No", "Yes"),
                 f"Determine if the following movie review has a positive sentiment. {YES_NO}", max_length=384,
                 dev_size=5000, hf_path="stanfordnlp/imdb", test_splits=("test",), dev_from="test"),
        TaskSpec("mmlu", 4, ("question", "choices"), "answer", ("A", "B", "C", "D"), ("A", "B", "C", "D"),
                 "Answer with A, B, C or D.", max_length=512, dev_size=200, hf_path="cais/mmlu", hf_name="all",
                 train_splits=("validation", "dev"), test_splits=("test",), instruction_after=True),
    ]
}
# fmt: on
_CUSTOM_SPLITS = {"train": "train", "dev": "dev", "validation": "dev", "test": "test"}


def list_tasks() -> list[str]:
    """Names of the built-in tasks (``get_task("custom", data_files=...)`` builds a task from your own files)."""
    return sorted(_TASKS)


def get_task(
    name: str | TaskSpec,
    *,
    data_files: dict[str, str] | None = None,
    num_labels: int | None = None,
    label_names: tuple[str, ...] | None = None,
    allow_rare_labels: bool = False,
    **overrides,
) -> TaskSpec:
    """Return the spec of a built-in task, with any TaskSpec field overridden by keyword (``text_fields=...``).

    ``name="custom"`` (or a path to a .csv/.tsv/.jsonl/.json[.gz] training file) builds a task from ``data_files``
    (``{"train": path, "dev": path, "test": path}``; dev and test optional), see :func:`custom_task`.
    `allow_rare_labels` only concerns custom tasks (the built-in tasks' labels are known).
    """
    key = name.name if isinstance(name, TaskSpec) else str(name).strip()
    if not isinstance(name, TaskSpec) and (key.lower() == "custom" or key.lower().endswith(DATA_SUFFIXES)):
        files = dict(data_files or {})
        if key.lower() != "custom":
            files.setdefault("train", key)
        return custom_task(
            files,
            num_labels=num_labels,
            label_names=label_names,
            allow_rare_labels=allow_rare_labels,
            **overrides,
        )
    if data_files:
        raise SpartaError(
            f"data_files is only for custom tasks; for {key!r} pass a data dir holding {key}/<split>.jsonl.gz"
        )
    extra = _tuples(_clean(overrides | {"num_labels": num_labels, "label_names": label_names}))
    if isinstance(name, TaskSpec):
        return _validate(dataclasses.replace(name, **extra)) if extra else name
    norm = key.lower().replace("-", "").replace("_", "")
    if norm not in _TASKS:
        raise SpartaError(
            f"unknown task {name!r}; choose one of {', '.join(list_tasks())}, or 'custom' with data files"
        )
    return _validate(dataclasses.replace(_TASKS[norm], **extra)) if extra else _TASKS[norm]


def build_task(args: dict) -> TaskSpec:
    """The task described by a stored argument dict (run.json's "task": {"name": ..., overrides...})."""
    args = dict(args)
    return get_task(args.pop("name"), **args)


def label_words(task: str | TaskSpec) -> tuple[str, ...]:
    """Words an instruct model answers with, in label order (e.g. ("No", "Yes") for SST-2)."""
    return get_task(task).label_words


def custom_task(
    data_files: dict[str, str],
    *,
    text_fields: tuple[str, ...] | str = ("text",),
    label_field: str = "label",
    num_labels: int | None = None,
    label_names: tuple[str, ...] | None = None,
    allow_rare_labels: bool = False,
    **overrides,
) -> TaskSpec:
    """Build a task from CSV/TSV/JSONL/JSON files (optionally gzipped).

    Int labels (or int-like strings, as CSV gives) are used as ids, ``num_labels`` defaulting to max + 1. Other
    string labels are mapped to ids in sorted order. ``label_names`` names the classes in id order: the label
    values (strings, or ints written as text), or, for an int column whose values are none of them, the names of
    ids 0..len-1. -1, empty and null mark unlabelled rows (GLUE test splits): like any label outside the task's,
    a SpartaError naming the file.
    Unless ``label_names`` is given, a column mixing int and other labels is an error (a typo would be a class);
    unless ``label_names``, ``num_labels`` or ``allow_rare_labels`` is given, so is a class with very few training
    rows or a dev/test label absent from train (`sparta.tasks.labels`).
    Without a dev file, 10% of train (at most 1000) is carved off as dev; without a test file the test split is
    empty.
    """
    unknown = set(data_files) - set(_CUSTOM_SPLITS)
    if unknown or "train" not in data_files:
        raise SpartaError(
            f"custom task data_files needs a 'train' file and only the keys train, dev, test; got {sorted(data_files)}"
        )
    text_fields = (text_fields,) if isinstance(text_fields, str) else tuple(text_fields)
    files = tuple((_CUSTOM_SPLITS[k], str(v)) for k, v in data_files.items())
    labels: list[tuple[str, list[object]]] = []  # (file, its label values)
    columns: list[L.LabelColumn] = []  # the labelled rows of each file, with their line numbers
    n_train = 0
    for split, path in files:
        rows, where = read_located(path)
        for col in (*text_fields, label_field):
            if col not in rows[0]:
                raise SpartaError(
                    f"{path}: column {col!r} not found; the columns are {', '.join(map(repr, rows[0]))}"
                )
        values = [r.get(label_field) for r in rows]
        labels.append((path, values))
        kept = [(v, w) for v, w in zip(values, where, strict=True) if not _unlabelled(v)]
        columns.append(L.LabelColumn(split, path, [v for v, _ in kept], [w for _, w in kept]))
        n_train += len(rows) if split == "train" else 0
    given = [v for c in columns for v in c.values]
    declared = label_names is not None
    if not declared:
        L.check_mixed_types(columns)
    all_int = bool(given) and all(_intlike(v) for v in given)
    # an int column with names for its ids (--labels neg,pos over 0/1), rather than the values themselves
    by_id = declared and all_int and not {str(int(v)) for v in given} & set(map(str, label_names))
    ints = all_int and (not declared or by_id)
    label_values: tuple[str, ...] = ()
    if by_id:
        label_names = tuple(map(str, label_names))
        expected = f"ints 0..{len(label_names) - 1} (ids of the {len(label_names)} label_names)"
    elif ints:
        n = num_labels or max(int(v) for v in given) + 1
        label_names = tuple(str(i) for i in range(n))
        expected = f"ints 0..{n - 1} (num_labels={n})"
    elif label_names:
        label_names = label_values = tuple(label_names)
        expected = f"among label_names {list(label_values)}"
    else:
        label_names = label_values = tuple(sorted({str(v) for v in given}))
        expected = f"among the labels {list(label_values)}" if label_values else "class labels"
    valid = {str(i) for i in range(len(label_names))} if by_id else set(label_names)
    for path, values in labels:
        _check_labels(path, label_field, values, valid, ints, expected)
    if num_labels is not None and num_labels != len(label_names):
        raise SpartaError(f"num_labels={num_labels} but the custom task has labels {list(label_names)}")
    words = tuple(overrides.pop("label_words", None) or label_names)
    fields = {
        "name": "custom",
        "num_labels": len(label_names),
        "text_fields": text_fields,
        "label_field": label_field,
        "label_names": tuple(label_names),
        "label_words": words,
        "instruction": f"Classify the following text. Respond with {_or(words)}.",
        "dev_size": min(1000, max(1, n_train // 10)),
        "data_files": files,
        "label_values": label_values,
        "train_splits": ("train",),
        "test_splits": ("test",),
        "dev_splits": ("dev",) if any(s == "dev" for s, _ in files) else (),
    }
    spec = _validate(TaskSpec(**(fields | _tuples(_clean(overrides)))))
    if not (declared or num_labels is not None or allow_rare_labels):
        key = (lambda v: str(int(v))) if ints else str
        L.check_unseen(columns, key)
        L.check_rare(columns, label_names, key)
    return spec


def _validate(spec: TaskSpec) -> TaskSpec:
    if spec.num_labels < 2:
        raise SpartaError(f"task {spec.name!r} needs at least 2 labels, got {spec.num_labels}")
    for what in ("label_names", "label_words"):
        if len(getattr(spec, what)) != spec.num_labels:
            raise SpartaError(
                f"task {spec.name!r}: {what} {list(getattr(spec, what))} must have num_labels={spec.num_labels} entries"
            )
    if not spec.metrics or set(spec.metrics) - set(METRICS):
        raise SpartaError(
            f"task {spec.name!r}: metrics {list(spec.metrics)} must be among {', '.join(METRICS)}"
        )
    if spec.dev_from not in ("train", "test"):
        raise SpartaError(f"task {spec.name!r}: dev_from must be 'train' or 'test', got {spec.dev_from!r}")
    if spec.max_length < 1 or spec.dev_size < 1 or spec.train_cap < 1:
        raise SpartaError(f"task {spec.name!r}: max_length, dev_size and train_cap must be positive")
    return spec


_intlike = L.is_int


def _unlabelled(v: object) -> bool:
    """A value marking an example without a label: null, empty, or a negative int (GLUE test splits use -1)."""
    return v is None or (isinstance(v, str) and not v.strip()) or (_intlike(v) and int(v) < 0)


def _check_labels(
    path: str, column: str, values: list[object], valid: set[str], ints: bool, expected: str
) -> None:
    """Raise a SpartaError naming the file, the column and the label values that are not in `valid` (read as
    `_normalise` reads them: by int value when `ints`, else as text)."""
    bad: dict[str, int] = {}
    for v in values:
        key = str(int(v)) if ints and _intlike(v) else str(v)
        if key not in valid:
            shown = "null" if v is None else repr(v) if isinstance(v, str) and not v.strip() else key
            bad[shown] = bad.get(shown, 0) + 1
    if not bad:
        return
    shown = ", ".join(f"{k} ({n} row{'s' * (n > 1)})" for k, n in sorted(bad.items())[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    unlabelled = any(_unlabelled(v) for v in values)
    hint = (
        "-1, empty and null mark examples without a label (GLUE test splits use -1): drop those rows, or leave "
        "that file out (a test file needs labels to be scored); "
        if unlabelled
        else ""
    )
    raise SpartaError(
        f"{path}: column {column!r} holds labels {shown}{more} that are not {expected}; {hint}custom task "
        "labels must be ints 0..c-1 for c classes, or strings (each distinct string is one class)"
    )


def _or(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _clean(d: dict) -> dict:
    bad = set(d) - {f.name for f in dataclasses.fields(TaskSpec)}
    if bad:
        raise SpartaError(f"unknown task option(s) {sorted(bad)}")
    return {k: v for k, v in d.items() if v is not None}


def _tuples(d: dict) -> dict:
    """Lists given by users (e.g. from YAML) become tuples; a single text field may be given as a string."""
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    if isinstance(out.get("text_fields"), str):
        out["text_fields"] = (out["text_fields"],)
    return out
