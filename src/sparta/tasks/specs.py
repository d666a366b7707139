"""Task specifications: the GLUE tasks, IMDB and MMLU of the paper (Table 2), GSM8K for instruction fine-tuning,
plus user-defined custom tasks (classification, or language modelling over chat / prompt-completion / text rows)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparta.errors import SpartaError
from sparta.tasks import rows
from sparta.tasks.files import DATA_SUFFIXES, read_located
from sparta.tasks.labels import (
    LabelColumn,
    check_mixed_types,
    check_rare,
    check_unseen,
    check_values,
    is_int,
    unlabelled,
)
from sparta.tasks.preference import PAIR_FIELDS

YES_NO = "Respond Yes or No."
METRICS = ("accuracy", "mcc", "f1")  # implemented in sparta.tasks.metrics
CLASSIFICATION, LANGUAGE_MODELLING, PREFERENCE = "classification", "language-modelling", "preference"
RL = "grpo"  # reinforcement learning from the model's own sampled answers (sparta.objectives.grpo)
OBJECTIVES = (CLASSIFICATION, LANGUAGE_MODELLING, PREFERENCE, RL)
GENERATORS = ("arithmetic",)  # tasks generated from a seed, without data files (sparta.tasks.arithmetic)
LM_METRICS = ("loss", "exact_match")  # computed by the language-modelling objective
ANSWER_PARSERS = ("gsm8k",)  # sparta.tasks.gsm8k
# options that only mean something for classification tasks: refused for a custom language-modelling task
_CLASSIFICATION_ONLY = (
    "num_labels",
    "label_names",
    "label_words",
    "label_field",
    "text_fields",
    "label_values",
)
# options that name the columns of a language-modelling or a preference task: refused for the other kinds
_LM_ONLY = ("format", "messages_field", "completion_field", "text_field")
_PREFERENCE_ONLY = ("chosen_field", "rejected_field")
COLUMN_OPTIONS = (*_LM_ONLY, "prompt_field", *_PREFERENCE_ONLY)  # the format and columns of SFT and DPO rows


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to load, prompt and score one task: sequence classification, or language modelling (SFT).

    Labels are ints in ``range(num_labels)``; ``label_words[i]`` is the word an instruct model answers for label i
    (used to initialise the classification head), ``label_names[i]`` its human name.
    A language-modelling task (``objective="language-modelling"``) has ``num_labels=0`` and no labels; its rows are
    chat ``messages`` (a list of {role, content}), a ``prompt`` and a ``completion``, or plain ``text`` (``format``,
    the column names in the ``*_field``s); `sparta.tasks.chat` turns them into tokens and loss masks.
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
    objective: str = CLASSIFICATION  # or "language-modelling" (sparta.objectives.OBJECTIVES)
    # language-modelling tasks only
    format: str = rows.MESSAGES  # "messages" | "prompt-completion" | "text" (sparta.tasks.rows.FORMATS)
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    text_field: str = "text"
    system_prompt: str | None = None  # None: the chat template's default (SmolLM2's names itself), if any
    keep_calculator: bool = False  # GSM8K: keep the <<48/2=24>> calculator annotations in the targets
    answer_parser: str | None = None  # "gsm8k": final numbers are compared (sparta.tasks.gsm8k)
    generation_metric: bool = False  # evaluation also scores the exact match of a greedy generation
    # preference tasks only (their prompt column is ``prompt_field``)
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    hf_data_dir: str | None = None  # the hub dataset's data_dir (hh-rlhf: "harmless-base")
    local_file: str = ""  # a file under the data dir whose rows are carved into train/dev/test (hh-harmless)
    # generated tasks only: rows made from a seed (train_cap train, dev_size dev and test_size test problems)
    generator: str | None = None  # "arithmetic" (sparta.tasks.arithmetic)
    difficulty: int = 2
    generator_seed: int = 0
    test_size: int = 500
    description: str = ""


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
    t.name.replace("-", ""): t
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
        # instruction fine-tuning: the question is the user turn, the worked answer (annotations stripped) the
        # assistant turn; 500 dev problems carved from the 7,473 of train; scored on the final number
        TaskSpec("gsm8k", 0, (), "", (), (), "", metrics=LM_METRICS, max_length=512, dev_size=500,
                 hf_path="openai/gsm8k", hf_name="main", test_splits=("test",), objective=LANGUAGE_MODELLING,
                 format=rows.PROMPT_COMPLETION, prompt_field="question", completion_field="answer",
                 answer_parser="gsm8k", generation_metric=True),
        # reinforcement learning with verifiable rewards (GRPO): integer expressions generated from a seed with a
        # difficulty knob (sparta.tasks.arithmetic), 5,000 train / 200 dev / 500 test problems, scored on the number
        TaskSpec("arithmetic", 0, (), "", (), (), "", metrics=("exact_match",), max_length=256, dev_size=200,
                 train_cap=5000, test_splits=("test",), objective=RL, format=rows.PROMPT_COMPLETION,
                 prompt_field="question", completion_field="answer", answer_parser="gsm8k", generation_metric=True,
                 generator="arithmetic",
                 description="integer arithmetic generated from a seed (no data files); --difficulty 1..8"),
        # preference pairs (DPO): the 2,312 harmless test pairs of hh-rlhf available offline, carved 1,812 / 250 /
        # 250 (sparta.tasks.preference.carve, before any length filter); online (no data dir) Anthropic/hh-rlhf
        # harmless-base with its own train and test splits, 250 dev pairs carved from train
        TaskSpec("hh-harmless", 0, (), "", (), (), "", metrics=("loss",), max_length=512, dev_size=250,
                 hf_path="Anthropic/hh-rlhf", hf_data_dir="harmless-base", test_splits=("test",),
                 objective=PREFERENCE, local_file="hh-rlhf-harmless/test.jsonl.gz",
                 description="hh-rlhf harmless preference pairs: offline, the 2,312 pairs of "
                             "hh-rlhf-harmless/test.jsonl.gz carved 1,812 train / 250 dev / 250 test before any "
                             "length filter; online, Anthropic/hh-rlhf (harmless-base) train/test, dev carved "
                             "from train"),
    ]
}
# fmt: on
_CUSTOM_SPLITS = {"train": "train", "dev": "dev", "validation": "dev", "test": "test"}


def list_tasks() -> list[str]:
    """Names of the built-in tasks (``get_task("custom", data_files=...)`` builds a task from your own files)."""
    return sorted(t.name for t in _TASKS.values())


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
    (``{"train": path, "dev": path, "test": path}``; dev and test optional), see :func:`custom_task`; with
    ``objective="language-modelling"`` an SFT task, see :func:`custom_lm_task`, with ``objective="preference"``
    a DPO task, see :func:`custom_preference_task`; without an objective the training file's columns choose it
    (:func:`objective_from_columns`).
    `allow_rare_labels` only concerns custom tasks (the built-in tasks' labels are known).
    """
    key = name.name if isinstance(name, TaskSpec) else str(name).strip()
    if not isinstance(name, TaskSpec) and (key.lower() == "custom" or key.lower().endswith(DATA_SUFFIXES)):
        files = dict(data_files or {})
        if key.lower() != "custom":
            files.setdefault("train", key)
        if overrides.get("objective") not in (None, *OBJECTIVES):
            raise SpartaError(
                f"objective {overrides['objective']!r} is unknown; choose one of {', '.join(OBJECTIVES)}"
            )
        _custom_files(files)  # its keys checked before the training file is read
        if overrides.get("objective") is None:
            given = overrides | {
                "num_labels": num_labels,
                "label_names": label_names,
                "allow_rare_labels": allow_rare_labels,
            }
            overrides["objective"] = objective_from_columns(files["train"], given)
        if overrides.get("objective") == PREFERENCE:
            return custom_preference_task(files, **overrides)
        if overrides.get("objective") == LANGUAGE_MODELLING:
            labels = {
                "num_labels": num_labels,
                "label_names": label_names,
                "allow_rare_labels": allow_rare_labels,
            }
            return custom_lm_task(files, **overrides, **labels)
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
    if _TASKS[norm].objective == CLASSIFICATION:  # e.g. --task sst2 --prompt-field x: never silently ignored
        _refuse(
            overrides, COLUMN_OPTIONS, "SFT and preference tasks", f"classification ({_TASKS[norm].name})"
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
    files = _custom_files(data_files)
    hint = " (the input columns of a classification task are text_fields: --text-fields)"
    _refuse(overrides, ("text_field",), "SFT on plain text", CLASSIFICATION, hint)
    _refuse(overrides, COLUMN_OPTIONS, "SFT and preference tasks", CLASSIFICATION)
    text_fields = (text_fields,) if isinstance(text_fields, str) else tuple(text_fields)
    labels: list[tuple[str, list[object]]] = []  # (file, its label values)
    columns: list[LabelColumn] = []  # the labelled rows of each file, with their line numbers
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
        kept = [(v, w) for v, w in zip(values, where, strict=True) if not unlabelled(v)]
        columns.append(LabelColumn(split, path, [v for v, _ in kept], [w for _, w in kept]))
        n_train += len(rows) if split == "train" else 0
    given = [v for c in columns for v in c.values]
    declared = label_names is not None
    if not declared:
        check_mixed_types(columns)
    all_int = bool(given) and all(is_int(v) for v in given)
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
        check_values(path, label_field, values, valid, ints, expected)
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
        check_unseen(columns, key)
        check_rare(columns, label_names, key)
    return spec


def custom_lm_task(data_files: dict[str, str], *, format: str | None = None, **overrides) -> TaskSpec:  # noqa: A002
    """Build a language-modelling (SFT) task from CSV/TSV/JSONL/JSON files (optionally gzipped).

    ``format`` is "messages", "prompt-completion" or "text" (`sparta.tasks.rows`), detected from the training
    file's columns when not given (a messages column, else prompt and completion, else text; the column names
    are the ``*_field`` overrides). Every row of every file is checked: a missing column, a role other than
    system/user/assistant, a conversation without an assistant turn or an empty completion is a SpartaError
    naming the file and line. Dev is carved from train (10%, at most 1000) when there is no dev file.
    """
    files = _custom_files(data_files)
    _refuse(
        overrides, (*_CLASSIFICATION_ONLY, "allow_rare_labels"), "classification tasks", LANGUAGE_MODELLING
    )
    _refuse(overrides, _PREFERENCE_ONLY, "preference tasks", LANGUAGE_MODELLING)
    overrides.pop("allow_rare_labels", None)  # False or None: not a TaskSpec field
    fields = _tuples(_clean(overrides))
    columns = rows.Columns(**{k: v for k, v in fields.items() if k in rows.Columns.__dataclass_fields__})
    fmt, n_train = rows.check_files(files, columns, format)
    metrics = LM_METRICS if fields.get("generation_metric") else ("loss",)
    dev = ("dev",) if any(s == "dev" for s, _ in files) else ()
    spec = TaskSpec(
        "custom",
        0,
        (),
        "",
        (),
        (),
        "",
        metrics=metrics,
        max_length=1024,
        data_files=files,
        dev_size=min(1000, max(1, n_train // 10)),
        dev_splits=dev,
        test_splits=("test",),
    )
    return _validate(dataclasses.replace(spec, **fields, format=fmt))


def objective_from_columns(path: str, options: dict) -> str:
    """The objective a custom training file's columns say, where none is given (`options`: the task's
    keyword arguments, whose ``*_field``s name the columns):

    * any classification option given (``text_fields``, ``label_field``, ``label_names``, ...): classification;
    * ``chosen`` and ``rejected`` columns: preference (DPO; with a ``prompt``, or hh-rlhf's whole dialogues);
    * a ``messages`` column, or ``prompt`` and ``completion``, or a ``format`` given: language modelling (SFT);
    * a ``label`` column: classification.

    A lone ``text`` column is no answer (a classification file whose label column is misnamed has one too):
    language modelling on plain text takes ``objective="language-modelling"``. Columns that fit none of these
    are a SpartaError naming every format, its columns and the flags that name them."""
    if any(options.get(k) for k in (*_CLASSIFICATION_ONLY, "allow_rare_labels")):
        return CLASSIFICATION
    rows, _ = read_located(path)
    have = set(rows[0])

    def named(key: str, default: str) -> str:
        return options.get(key) or default

    prompt, chosen, rejected = _pair_names(options)
    messages, completion = named("messages_field", "messages"), named("completion_field", "completion")
    if {chosen, rejected} <= have:
        return PREFERENCE
    if messages in have or {prompt, completion} <= have or options.get("format"):
        return LANGUAGE_MODELLING
    if "label" in have:  # (its input columns are checked by `custom_task`)
        return CLASSIFICATION
    text = named("text_field", "text")
    raise SpartaError(
        f"{path}: the columns {_quoted(rows[0])} fit no task format; rename them, name yours, or give --objective "
        f"({', '.join(OBJECTIVES)}). {CLASSIFICATION} reads 'text' and 'label' (--text-fields, --label-field); "
        f"{LANGUAGE_MODELLING} (SFT) reads a {messages!r} list of chat turns (--messages-field), "
        f"{_quoted((prompt, completion))} (--prompt-field, --completion-field), or, with --objective "
        f"{LANGUAGE_MODELLING}, a {text!r} column (--text-field); {PREFERENCE} (DPO) reads "
        f"{_quoted((prompt, chosen, rejected))} (--prompt-field, --chosen-field, --rejected-field)"
    )


def _pair_names(options: dict) -> tuple[str, str, str]:
    """The (prompt, chosen, rejected) columns that task options name (the defaults where they name none)."""
    keys = ("prompt_field", "chosen_field", "rejected_field")
    return tuple(options.get(k) or d for k, d in zip(keys, PAIR_FIELDS, strict=True))  # type: ignore[return-value]


def read_columns(task: TaskSpec) -> tuple[str, ...]:
    """The columns a task's rows are read from (its format's, for a language-modelling task)."""
    if task.objective == LANGUAGE_MODELLING:
        return rows.required_columns(task)
    if task.objective == PREFERENCE:
        return (task.prompt_field, task.chosen_field, task.rejected_field)
    return (*task.text_fields, task.label_field)


def _quoted(names) -> str:  # noqa: ANN001 - any iterable of column names
    items = [repr(str(n)) for n in names]
    return " and ".join(items) if len(items) <= 2 else ", ".join(items[:-1]) + " and " + items[-1]


def _refuse(options: dict, keys: tuple[str, ...], what: str, kind: str, hint: str = "") -> None:
    """A SpartaError when `options` sets any of `keys`, which only apply to `what`, not to a `kind` task."""
    bad = sorted(k for k in keys if options.get(k))
    if bad:
        verb, them = ("applies", "it") if len(bad) == 1 else ("apply", "them")
        raise SpartaError(
            f"{', '.join(bad)} only {verb} to {what}, not to a {kind} task; leave {them} out{hint}"
        )


def custom_preference_task(data_files: dict[str, str], **overrides) -> TaskSpec:
    """A preference (DPO) task from JSONL/CSV files of ``prompt`` + ``chosen`` + ``rejected`` rows (or hh-rlhf's
    ``chosen`` + ``rejected`` dialogues); chosen with ``objective="preference"`` or detected from the columns.
    Rows that are no clean pair are dropped and counted when encoded (`sparta.tasks.preference.pair_of`). Dev is
    carved from train (10%, at most 1000) when there is no dev file."""
    files = _custom_files(data_files)
    _refuse(overrides, (*_CLASSIFICATION_ONLY, "allow_rare_labels"), "classification tasks", PREFERENCE)
    _refuse(overrides, _LM_ONLY, "language-modelling tasks", PREFERENCE)
    overrides.pop("allow_rare_labels", None)
    rows, _ = read_located(dict(files)["train"])
    prompt, chosen, rejected = _pair_names(overrides)
    missing = [c for c in (chosen, rejected) if c not in rows[0]]
    if missing:
        raise SpartaError(
            f"{dict(files)['train']}: a preference task needs columns {_quoted((prompt, chosen, rejected))} (or "
            f"hh-rlhf's {chosen!r} and {rejected!r} dialogues); {_quoted(missing)} not found among "
            f"{_quoted(rows[0])} (name yours: --prompt-field, --chosen-field, --rejected-field)"
        )
    dev = ("dev",) if any(s == "dev" for s, _ in files) else ()
    spec = TaskSpec(
        "custom",
        0,
        (),
        "",
        (),
        (),
        "",
        metrics=("loss",),
        max_length=1024,
        data_files=files,
        dev_size=min(1000, max(1, len(rows) // 10)),
        dev_splits=dev,
        test_splits=("test",),
        objective=PREFERENCE,
    )
    return _validate(dataclasses.replace(spec, **_tuples(_clean(overrides))))


def _custom_files(data_files: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """(split, path) pairs of a custom task's files, checking the keys."""
    unknown = set(data_files) - set(_CUSTOM_SPLITS)
    if unknown or "train" not in data_files:
        raise SpartaError(
            f"custom task data_files needs a 'train' file and only the keys train, dev, test; got {sorted(data_files)}"
        )
    return tuple((_CUSTOM_SPLITS[k], str(v)) for k, v in data_files.items())


def _validate(spec: TaskSpec) -> TaskSpec:
    if spec.objective not in OBJECTIVES:
        raise SpartaError(
            f"task {spec.name!r}: objective {spec.objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}"
        )
    if spec.objective == PREFERENCE:
        if spec.num_labels or spec.label_names:
            raise SpartaError(f"task {spec.name!r} has labels; a preference task has pairs of replies")
    else:
        (_validate_lm if spec.objective in (LANGUAGE_MODELLING, RL) else _validate_labels)(spec)
    if spec.generator not in (None, *GENERATORS):
        raise SpartaError(f"task {spec.name!r}: generator must be one of {', '.join(GENERATORS)} or None")
    if spec.generator is not None:
        from sparta.tasks.arithmetic import check_difficulty

        check_difficulty(spec.difficulty)
    elif spec.difficulty != TaskSpec.difficulty:
        raise SpartaError(
            f"--difficulty sets a generated task's difficulty (arithmetic); {spec.name!r} is read "
            "from data: leave it unset"
        )
    if spec.dev_from not in ("train", "test"):
        raise SpartaError(f"task {spec.name!r}: dev_from must be 'train' or 'test', got {spec.dev_from!r}")
    if spec.max_length < 1 or spec.dev_size < 1 or spec.train_cap < 1:
        raise SpartaError(f"task {spec.name!r}: max_length, dev_size and train_cap must be positive")
    return spec


def _validate_labels(spec: TaskSpec) -> None:
    """The checks of a classification spec: its labels and metrics."""
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


def _validate_lm(spec: TaskSpec) -> None:
    """The checks of a language-modelling spec: no labels, a row format, the objective's metrics."""
    if spec.num_labels or spec.label_names or spec.label_words:
        raise SpartaError(
            f"task {spec.name!r} has labels, so it is a classification task; objective {LANGUAGE_MODELLING} "
            "is for tasks of conversations, prompt-completion pairs or text (e.g. gsm8k, or custom with data files)"
        )
    if spec.format not in rows.FORMATS:
        raise SpartaError(
            f"task {spec.name!r}: format must be one of {', '.join(rows.FORMATS)}, got {spec.format!r}"
        )
    if ("loss" not in spec.metrics and spec.objective != RL) or set(spec.metrics) - set(LM_METRICS):
        raise SpartaError(
            f"task {spec.name!r}: metrics {list(spec.metrics)} must include loss and be among {', '.join(LM_METRICS)}"
        )
    if spec.answer_parser not in (None, *ANSWER_PARSERS):
        raise SpartaError(
            f"task {spec.name!r}: answer_parser must be one of {', '.join(ANSWER_PARSERS)} or None, "
            f"got {spec.answer_parser!r}"
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
