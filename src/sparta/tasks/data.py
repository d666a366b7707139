"""Loading a task's train/dev/test splits, as in Table 2 of the paper, from local files or the Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sparta.errors import SpartaError
from sparta.tasks.chat import encode_example
from sparta.tasks.files import read_records
from sparta.tasks.labels import warn_missing_eval_classes
from sparta.tasks.preference import HH_SIZES, carve
from sparta.tasks.prompts import format_input
from sparta.tasks.rows import check_row
from sparta.tasks.specs import CLASSIFICATION, LANGUAGE_MODELLING, PREFERENCE, TaskSpec, get_task

SPLIT_SEED = 20240901  # fixed: the dev carve and eval subsets do not depend on the training seed
HUB = "hub"  # data_dir value that forces loading from the Hugging Face hub
REPO_ROOT = Path(__file__).resolve().parents[3]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data folder: ``data_dir``, else $SPARTA_DATA_DIR, else ../shared/data beside the working dir or the
    repository; None means the Hugging Face hub (also forced by ``data_dir="hub"``)."""
    given = data_dir if data_dir is not None else os.environ.get("SPARTA_DATA_DIR") or None
    if given is not None:
        if str(given) == HUB:
            return None
        if not Path(given).is_dir():
            raise SpartaError(
                f"data dir {given} is not a folder; pass --data-dir DIR holding <task>/<split>.jsonl.gz"
            )
        return Path(given)
    for base in (Path.cwd(), REPO_ROOT):
        if (base.parent / "shared" / "data").is_dir():
            return (base.parent / "shared" / "data").resolve()
    return None


def load_splits(
    task: str | TaskSpec,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> dict[str, list[dict]]:
    """Return {"train", "dev", "test"} lists of examples (dicts with the text fields and an int "label"; for a
    language-modelling task the raw rows, each checked against the task's format).

    Dev is carved with a fixed seed from train (IMDB: from test) unless the task has dev files; train is then capped
    at ``task.train_cap``. ``max_train_samples`` keeps a subset of train drawn with ``seed``; ``max_eval_samples``
    keeps a fixed-seed subset of dev and of test. Every list keeps the file order. Over-long examples are dropped
    separately, with :func:`filter_by_length`, as that needs the tokenizer. A dev or test split without some
    training class (a small ``max_eval_samples`` may not draw it) is logged as a warning.
    """
    task = get_task(task)
    for name, n in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if n is not None and n < 1:
            raise SpartaError(f"{name} must be a positive number, got {n}")
    carved = _carved(task, data_dir) or _generated(task)
    train, dev, test = (
        (carved["train"], carved["dev"], carved["test"]) if carved else _read_splits(task, data_dir)
    )
    train = _subset(train, task.train_cap, SPLIT_SEED)
    if max_train_samples is not None:
        train = _subset(train, max_train_samples, seed)
    if max_eval_samples is not None:
        dev, test = (
            _subset(dev, max_eval_samples, SPLIT_SEED + 1),
            _subset(test, max_eval_samples, SPLIT_SEED + 2),
        )
    splits = {"train": train, "dev": dev, "test": test}
    if task.objective == CLASSIFICATION:  # language-modelling and preference tasks have no classes
        warn_missing_eval_classes(task.label_names, splits, max_eval_samples)
    return splits


def _read_splits(task: TaskSpec, data_dir) -> tuple[list[dict], list[dict], list[dict]]:  # noqa: ANN001
    """(train, dev, test) as the task's splits say: dev read, or carved from train or test."""
    read = _reader(task, data_dir)
    train, test = read(task.train_splits), read(task.test_splits)
    if task.dev_splits:
        return train, read(task.dev_splits), test
    if task.dev_from == "test":
        dev, test = _carve(test, task.dev_size, f"{task.name} test")
        return train, dev, test
    dev, train = _carve(train, task.dev_size, f"{task.name} train")
    return train, dev, test


def _carved(task: TaskSpec, data_dir) -> dict[str, list[dict]] | None:
    """A task read from one local file and carved (hh-harmless offline), or None to read its splits."""
    if not task.local_file or task.data_files:
        return None
    root = resolve_data_dir(data_dir)
    if root is None:
        return None
    path = root / task.local_file
    if not path.is_file():
        raise SpartaError(
            f"{task.name}: data file {path} not found; pass --data-dir DIR holding {task.local_file}, "
            f"or --data-dir {HUB} to read {task.hf_path} from the Hugging Face hub"
        )
    return carve(read_records(path))


def _generated(task: TaskSpec) -> dict[str, list[dict]] | None:
    """A task generated from its seed (`sparta.tasks.arithmetic`), or None to read its splits."""
    if task.generator is None:
        return None
    from sparta.tasks.arithmetic import generate_splits

    sizes = {"train": task.train_cap, "dev": task.dev_size, "test": task.test_size}
    return generate_splits(sizes, task.difficulty, task.generator_seed)


def data_source(task: TaskSpec, data_dir=None) -> dict[str, object]:  # noqa: ANN001
    """Where a task's splits come from, for results.json: files, a carved local file, the hub, or a data dir."""
    if task.data_files:
        return {"kind": "files", "files": dict(task.data_files)}
    if task.generator is not None:
        return {
            "kind": "generated",
            "generator": f"sparta.tasks.{task.generator}",
            "difficulty": task.difficulty,
            "seed": task.generator_seed,
        }
    root = resolve_data_dir(data_dir)
    if task.local_file and root is not None:
        return {
            "kind": "carved local file",
            "path": str(root / task.local_file),
            "carve": "sparta.tasks.preference.carve",
            "sizes": {"train": "the rest", **HH_SIZES},
        }
    if root is None:
        return {
            "kind": "hub",
            "dataset": task.hf_path,
            "name": task.hf_name,
            "data_dir": task.hf_data_dir,
            "train": list(task.train_splits),
            "test": list(task.test_splits),
            "dev": list(task.dev_splits) or f"{task.dev_size} carved from {task.dev_from}",
        }
    return {"kind": "data dir", "path": str(root / task.name)}


def filter_by_length(
    task: str | TaskSpec,
    examples: list[dict],
    tokenizer,
    *,
    instruct: bool = False,
    template: str | None = None,
    max_length: int | None = None,
) -> list[dict]:
    """Drop examples whose formatted input is longer than ``max_length`` (default ``task.max_length``) tokens,
    as the paper does for training data. Tokenized as the trainer should: special tokens added for base models,
    none for instruct models (the chat template already holds them). A language-modelling example counts the
    tokens of its whole encoding (`sparta.tasks.chat.encode_example`; ``template`` does not apply)."""
    task = get_task(task)
    limit = max_length or task.max_length
    if task.objective == LANGUAGE_MODELLING:
        return [ex for ex in examples if len(encode_example(task, ex, tokenizer, instruct)[0]) <= limit]
    texts = [format_input(task, ex, tokenizer, instruct=instruct, template=template) for ex in examples]
    ids = tokenizer(texts, add_special_tokens=not instruct)["input_ids"] if texts else []
    return [ex for ex, t in zip(examples, ids, strict=True) if len(t) <= limit]


def _reader(task: TaskSpec, data_dir):
    """A function reading the named splits, concatenated, with labels normalised."""
    hub = f"{task.hf_path}" + (f" ({task.hf_name})" if task.hf_name else "")
    root = None if task.data_files else resolve_data_dir(data_dir)
    if task.data_files:
        files = dict(task.data_files)

        def load(split: str) -> tuple[list[dict], object]:
            return (read_records(files[split]), files[split]) if split in files else ([], "")
    elif root is None:

        def load(split: str) -> tuple[list[dict], object]:
            return _hub(task, split, hub), f"{hub} {split}"
    else:
        needed = [
            root / task.name / f"{s}.jsonl.gz"
            for s in (*task.train_splits, *task.dev_splits, *task.test_splits)
        ]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise SpartaError(
                f"{task.name}: data file(s) not found: {', '.join(missing)}. Pass --data-dir DIR holding "
                f"{task.name}/<split>.jsonl.gz, or --data-dir {HUB} to download {hub} from the Hugging Face hub"
            )

        def load(split: str) -> tuple[list[dict], object]:
            path = root / task.name / f"{split}.jsonl.gz"
            return read_records(path), path

    def read(splits: tuple[str, ...]) -> list[dict]:
        out = []
        for split in splits:
            rows, source = load(split)
            if task.objective == LANGUAGE_MODELLING:  # the rows as they are, once checked
                for i, row in enumerate(rows, 1):
                    check_row(task, row, f"{source}: record {i}")
                out += rows
            elif task.objective == PREFERENCE:  # as they are: the encoding drops and counts bad pairs
                out += rows
            else:
                out += [_normalise(task, r, source) for r in rows]
        return out

    return read


def _hub(task: TaskSpec, split: str, name: str) -> list[dict]:
    try:  # optional (the `data` extra): only loading from the hub needs it
        import datasets
    except ImportError as e:
        raise SpartaError(
            f"loading {name} from the hub needs `pip install datasets`; or pass --data-dir DIR"
        ) from e
    try:
        extra = {"data_dir": task.hf_data_dir} if task.hf_data_dir else {}
        return datasets.load_dataset(task.hf_path, task.hf_name, split=split, **extra).to_list()
    except Exception as e:  # network, auth and missing-dataset errors all mean the same to the user
        raise SpartaError(
            f"could not load {name} split {split!r} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}); "
            f"pass --data-dir DIR holding {task.name}/{split}.jsonl.gz"
        ) from e


def _normalise(task: TaskSpec, row: dict, source) -> dict:
    """Check the fields and set an int "label" in range(num_labels)."""
    for col in (*task.text_fields, task.label_field):
        if col not in row:
            raise SpartaError(
                f"{source}: field {col!r} not found; the fields are {', '.join(map(repr, row))}"
            )
    raw = row[task.label_field]
    try:
        label = task.label_values.index(str(raw)) if task.label_values else int(raw)
    except (TypeError, ValueError):
        raise SpartaError(
            f"{source}: label {raw!r} is not one of the task's labels {list(task.label_names)}"
        ) from None
    if not 0 <= label < task.num_labels:
        raise SpartaError(
            f"{source}: label {raw!r} out of range for {task.num_labels} labels {list(task.label_names)}"
        )
    return {**row, "label": label}


def _carve(rows: list[dict], n: int, what: str) -> tuple[list[dict], list[dict]]:
    """Split off ``n`` rows drawn with the fixed split seed: (carved, rest), both in file order."""
    if n >= len(rows):
        raise SpartaError(
            f"cannot carve {n} dev examples from the {len(rows)} examples of {what}; set a smaller dev_size"
        )
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    return [rows[i] for i in sorted(perm[:n])], [rows[i] for i in sorted(perm[n:])]


def _subset(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows drawn with ``seed`` (nested: a smaller n gives a subset), in file order."""
    if n >= len(rows):
        return rows
    return [rows[i] for i in sorted(np.random.default_rng(seed).permutation(len(rows))[:n])]
