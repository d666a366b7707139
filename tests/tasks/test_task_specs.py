"""Task specs: registry, label conventions, overrides and errors."""

from __future__ import annotations

import dataclasses

import pytest

from sparta.errors import SpartaError
from sparta.tasks import TaskSpec, get_task, label_words, list_tasks

CLASSIFICATION = ["cola", "imdb", "mmlu", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2"]
ALL = sorted([*CLASSIFICATION, "arithmetic", "gsm8k", "hh-harmless"])
DEV_SIZES = {
    "cola": 1000,
    "mnli": 10000,
    "mrpc": 408,
    "qnli": 5000,
    "qqp": 5000,
    "rte": 300,
    "sst2": 1000,
    "imdb": 5000,
}


def test_list_tasks():
    assert list_tasks() == ALL


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_spec_is_consistent(name):
    t = get_task(name)
    assert isinstance(t, TaskSpec) and t.name == name
    assert len(t.label_names) == len(t.label_words) == t.num_labels
    assert t.metrics[0] == "accuracy" and t.train_cap == 100_000 and t.objective == "classification"
    assert t.label_field == ("answer" if name == "mmlu" else "label")
    assert t.max_length == {"imdb": 384, "mmlu": 512}.get(name, 256)
    if name in DEV_SIZES:
        assert t.dev_size == DEV_SIZES[name]
    if t.num_labels == 2 and name != "imdb":
        assert (
            t.instruction.endswith("Respond Yes or No.") and t.hf_path == "nyu-mll/glue" and t.hf_name == name
        )


def test_label_conventions():
    """Label words follow the HF label order: entailment (0) answers Yes, positive/acceptable (1) answers Yes."""
    for name in ("rte", "qnli"):
        assert label_words(name) == ("Yes", "No") and get_task(name).label_names[0] == "entailment"
    for name in ("sst2", "cola", "mrpc", "qqp", "imdb"):
        assert label_words(name) == ("No", "Yes")
    assert label_words("mnli") == ("Yes", "Maybe", "No")
    assert label_words(get_task("mmlu")) == ("A", "B", "C", "D")
    assert get_task("cola").metrics == ("accuracy", "mcc")
    assert get_task("mrpc").metrics == get_task("qqp").metrics == ("accuracy", "f1")
    assert get_task("sst2").metrics == ("accuracy",)


def test_aliases_and_overrides():
    assert get_task("SST-2") == get_task("sst2")
    t = get_task("rte", text_fields=["premise", "hypothesis"], max_length=128)
    assert t.text_fields == ("premise", "hypothesis") and t.max_length == 128
    assert get_task("rte").max_length == 256  # the registry is untouched
    assert get_task(t) is t and get_task(t, max_length=64).max_length == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.max_length = 3  # type: ignore[misc]


def test_errors():
    with pytest.raises(SpartaError, match="unknown task .glue.*cola, gsm8k, hh-harmless, imdb, mmlu"):
        get_task("glue")
    with pytest.raises(SpartaError, match="unknown task option"):
        get_task("rte", colour="red")
    with pytest.raises(SpartaError, match="label_words"):
        get_task("rte", label_words=("Yes", "No", "Maybe"))
    with pytest.raises(SpartaError, match="dev_from"):
        get_task("rte", dev_from="validation")
    with pytest.raises(SpartaError, match="'train' file"):
        get_task("custom")
    with pytest.raises(SpartaError, match="metrics.*must be among accuracy, mcc, f1"):
        get_task("sst2", metrics=("auc",))
    with pytest.raises(SpartaError, match="data_files is only for custom tasks"):
        get_task("sst2", data_files={"train": "a.csv"})
    with pytest.raises(SpartaError, match="at least 2 labels"):
        get_task(get_task("sst2"), num_labels=1, label_names=("x",), label_words=("x",))
