"""Loading splits: the shared data (Table 2 sizes), the dev carve, caps, subsets, data dirs and the hub."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest

from sparta.errors import SpartaError
from sparta.tasks import data as data_mod
from sparta.tasks import get_task, load_splits, resolve_data_dir
from sparta.tasks.files import read_records

# (train, dev, test) of Table 2 before the paper's length filter (which needs a tokenizer; see filter_by_length).
TABLE2 = {
    "cola": (7551, 1000, 1043),
    "sst2": (66349, 1000, 872),
    "mrpc": (3668, 408, 1725),
    "rte": (2190, 300, 277),
    "mmlu": (1616, 200, 14042),
    "qnli": (99743, 5000, 5463),
    "qqp": (100_000, 5000, 40430),
    "mnli": (100_000, 10000, 19647),
    "imdb": (25000, 5000, 20000),
}


def idxs(rows: list[dict]) -> list[int]:
    return [r["idx"] for r in rows]


def check_split_sizes(name: str, data_dir: Path) -> dict[str, list[dict]]:
    task = get_task(name)
    needed = [
        data_dir / name / f"{s}.jsonl.gz" for s in (*task.train_splits, *task.dev_splits, *task.test_splits)
    ]
    missing = [p for p in needed if not p.is_file()]
    if missing:  # QNLI train, QQP and MNLI are not in the shared data: the error must name the files
        with pytest.raises(SpartaError) as err:
            load_splits(name, data_dir)
        assert all(str(p) in str(err.value) for p in missing) and "--data-dir" in str(err.value)
        pytest.skip(f"{name}: {', '.join(map(str, missing))} absent (error checked)")
    splits = load_splits(name, data_dir)
    assert tuple(len(splits[k]) for k in ("train", "dev", "test")) == TABLE2[name]
    for rows in splits.values():
        assert all(type(r["label"]) is int and 0 <= r["label"] < task.num_labels for r in rows)
        assert all(isinstance(r[f], str | list) for r in rows[:50] for f in task.text_fields)
    return splits


@pytest.mark.parametrize("name", ["cola", "sst2", "mrpc", "rte", "mmlu", "qnli", "qqp", "mnli"])
def test_shared_data_sizes(name, shared_data):
    splits = check_split_sizes(name, shared_data)
    if name in ("mrpc", "mmlu"):
        return
    # the dev set is carved from train: disjoint, together all of train, both in file order
    train, dev = idxs(splits["train"]), idxs(splits["dev"])
    assert not set(train) & set(dev) and sorted(train + dev) == list(range(len(train) + len(dev)))
    assert train == sorted(train) and dev == sorted(dev)


@pytest.mark.slow
def test_shared_imdb(shared_data):
    splits = check_split_sizes("imdb", shared_data)
    file_texts = Counter(r["text"] for r in read_records(shared_data / "imdb" / "test.jsonl.gz"))
    assert (
        Counter(r["text"] for r in splits["dev"] + splits["test"]) == file_texts
    )  # dev and test partition the file
    assert 2000 < sum(r["label"] for r in splits["dev"]) < 3000  # the carve mixes the neg-then-pos file order


def test_mmlu_labels_come_from_answer(shared_data):
    splits = load_splits("mmlu", shared_data, max_eval_samples=50)
    assert all(r["label"] == r["answer"] and len(r["choices"]) == 4 for r in splits["train"] + splits["test"])


def test_carve_with_small_dev_size(glue_dir):
    task = get_task("rte", dev_size=30)
    s0, s1 = load_splits(task, glue_dir, seed=0), load_splits(task, glue_dir, seed=1)
    assert s0 == s1  # the training seed does not move the dev set
    assert idxs(s0["dev"]) == idxs(s1["dev"]) and len(s0["dev"]) == 30 and len(s0["train"]) == 170
    assert not set(idxs(s0["dev"])) & set(idxs(s0["train"]))
    assert sorted(idxs(s0["dev"]) + idxs(s0["train"])) == list(range(200))
    assert idxs(s0["dev"]) != list(range(30))  # drawn at random, not the head of the file
    assert len(s0["test"]) == 40  # GLUE validation is the test set


def test_dev_size_too_large(glue_dir):
    with pytest.raises(SpartaError, match="cannot carve 300 dev examples from the 200"):
        load_splits("rte", glue_dir)


def test_train_cap_and_max_train_samples(glue_dir):
    task = get_task("rte", dev_size=20, train_cap=100)
    full = load_splits(get_task("rte", dev_size=20), glue_dir)
    capped = load_splits(task, glue_dir)
    assert len(capped["train"]) == 100 and set(idxs(capped["train"])) < set(idxs(full["train"]))
    assert capped["dev"] == full["dev"]  # the cap applies after the dev carve
    small = load_splits(task, glue_dir, seed=3, max_train_samples=25)
    again = load_splits(task, glue_dir, seed=3, max_train_samples=25)
    other = load_splits(task, glue_dir, seed=4, max_train_samples=25)
    smaller = load_splits(task, glue_dir, seed=3, max_train_samples=10)
    assert len(small["train"]) == 25 and small == again and idxs(other["train"]) != idxs(small["train"])
    assert set(idxs(smaller["train"])) < set(idxs(small["train"])) < set(idxs(capped["train"]))
    assert idxs(small["train"]) == sorted(idxs(small["train"]))
    assert small["dev"] == capped["dev"] and small["test"] == capped["test"]
    assert len(load_splits(task, glue_dir, max_train_samples=10_000)["train"]) == 100
    with pytest.raises(SpartaError, match="max_train_samples"):
        load_splits(task, glue_dir, max_train_samples=0)


def test_max_eval_samples(glue_dir):
    task = get_task("rte", dev_size=30)
    a = load_splits(task, glue_dir, seed=0, max_eval_samples=12)
    b = load_splits(task, glue_dir, seed=9, max_eval_samples=12)
    full = load_splits(task, glue_dir)
    assert len(a["dev"]) == len(a["test"]) == 12 and a["dev"] == b["dev"] and a["test"] == b["test"]
    assert set(idxs(a["test"])) < set(idxs(full["test"])) and set(idxs(a["dev"])) < set(idxs(full["dev"]))
    assert a["train"] == full["train"]


def test_layouts_of_mrpc_mnli_imdb_mmlu(tmp_path, write_jsonl_gz, pair_rows):
    write_jsonl_gz(tmp_path / "mrpc" / "train.jsonl.gz", pair_rows(50))
    write_jsonl_gz(tmp_path / "mrpc" / "validation.jsonl.gz", pair_rows(8, start=50))
    write_jsonl_gz(tmp_path / "mrpc" / "test.jsonl.gz", pair_rows(9, start=100))
    s = load_splits("mrpc", tmp_path)
    assert (idxs(s["train"]), idxs(s["dev"]), idxs(s["test"])) == (
        list(range(50)),
        list(range(50, 58)),
        list(range(100, 109)),
    )

    nli = [{"premise": "p", "hypothesis": "h", "label": i % 3, "idx": i} for i in range(30)]
    write_jsonl_gz(tmp_path / "mnli" / "train.jsonl.gz", nli)
    write_jsonl_gz(tmp_path / "mnli" / "validation_matched.jsonl.gz", nli[:4])
    write_jsonl_gz(tmp_path / "mnli" / "validation_mismatched.jsonl.gz", nli[10:15])
    s = load_splits(get_task("mnli", dev_size=5), tmp_path)
    assert idxs(s["test"]) == [0, 1, 2, 3, 10, 11, 12, 13, 14] and len(s["train"]) == 25

    reviews = [{"text": f"review {i}", "label": int(i >= 20)} for i in range(40)]
    write_jsonl_gz(tmp_path / "imdb" / "train.jsonl.gz", reviews)
    write_jsonl_gz(tmp_path / "imdb" / "test.jsonl.gz", reviews)
    s = load_splits(get_task("imdb", dev_size=10), tmp_path)
    assert (len(s["train"]), len(s["dev"]), len(s["test"])) == (
        40,
        10,
        30,
    )  # IMDB's dev comes from its test split
    assert not {r["text"] for r in s["dev"]} & {r["text"] for r in s["test"]}

    q = [
        {"question": f"q{i}", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": i % 4}
        for i in range(12)
    ]
    write_jsonl_gz(tmp_path / "mmlu" / "validation.jsonl.gz", q[:8])
    write_jsonl_gz(tmp_path / "mmlu" / "dev.jsonl.gz", q[8:])
    write_jsonl_gz(tmp_path / "mmlu" / "test.jsonl.gz", q)
    s = load_splits(get_task("mmlu", dev_size=3), tmp_path)
    assert (
        len(s["train"]) == 9
        and len(s["dev"]) == 3
        and [r["label"] for r in s["test"]] == [i % 4 for i in range(12)]
    )


def test_bad_files(tmp_path, write_jsonl_gz):
    write_jsonl_gz(tmp_path / "sst2" / "train.jsonl.gz", [{"sentence": "a", "label": 1}] * 20)
    write_jsonl_gz(tmp_path / "sst2" / "validation.jsonl.gz", [{"sentence": "a", "label": 2}])
    with pytest.raises(SpartaError, match=r"validation.jsonl.gz: label 2 out of range"):
        load_splits(get_task("sst2", dev_size=2), tmp_path)
    write_jsonl_gz(tmp_path / "sst2" / "validation.jsonl.gz", [{"text": "a", "label": 0}])
    with pytest.raises(SpartaError, match="field 'sentence' not found; the fields are 'text', 'label'"):
        load_splits(get_task("sst2", dev_size=2), tmp_path)
    with gzip.open(tmp_path / "sst2" / "validation.jsonl.gz", "wt") as f:
        f.write('{"sentence": "a", "label": 0}\n{broken\n')
    with pytest.raises(SpartaError, match=r"validation.jsonl.gz:2: invalid JSON"):
        load_splits(get_task("sst2", dev_size=2), tmp_path)
    with pytest.raises(SpartaError, match="is not a folder"):
        load_splits("sst2", tmp_path / "nowhere")


def test_data_dir_resolution(glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARTA_DATA_DIR", str(glue_dir))
    assert resolve_data_dir() == glue_dir and resolve_data_dir(tmp_path / "rte") == tmp_path / "rte"
    assert (
        len(load_splits(get_task("sst2", dev_size=10), max_eval_samples=5)["test"]) == 5
    )  # read from $SPARTA_DATA_DIR
    assert resolve_data_dir("hub") is None
    monkeypatch.delenv("SPARTA_DATA_DIR")
    work = tmp_path / "proj" / "main"
    (tmp_path / "proj" / "shared" / "data").mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    assert (
        resolve_data_dir() == (tmp_path / "proj" / "shared" / "data").resolve()
    )  # ../shared/data beside the cwd
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data_mod, "REPO_ROOT", tmp_path / "elsewhere")
    assert resolve_data_dir() is None  # nothing local: the hub


def test_hub_offline_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SpartaError, match=r"nyu-mll/glue \(rte\) split 'train'.*--data-dir"):
        load_splits("rte", "hub")


def test_hub_loading(monkeypatch, pair_rows):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(pair_rows(60 if split == "train" else 10))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    s = load_splits(get_task("rte", dev_size=6), "hub")
    assert calls == [("nyu-mll/glue", "rte", "train"), ("nyu-mll/glue", "rte", "validation")]
    assert (len(s["train"]), len(s["dev"]), len(s["test"])) == (54, 6, 10)
