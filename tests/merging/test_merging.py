"""Merging SpaRTA adapters into a multi-head model (sparta.merging), using it through the run layer, and exporting
one adapter, on tiny models."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from sparta import SpartaError, SpartaModel  # noqa: E402
from sparta.adapter import iter_dense_deltas  # noqa: E402
from sparta.merging import fit_head, merge_adapters, refit_heads  # noqa: E402
from sparta.runs import (  # noqa: E402
    MultiHeadModel,
    evaluate,
    export_run,
    open_model,
    pool_last,
    predict_tasks,
    prompt_groups,  # noqa: E402
)
from tinyclsruns import bare_adapter, topic_examples, train_run, write_task
from tinylm import save_model_dir, toy_examples  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    base = save_model_dir(root / "base", chat=False, tied=False)
    sentiment = write_task(root / "data-sentiment", toy_examples)
    topic = write_task(root / "data-topic", topic_examples)
    return {
        "root": root,
        "base": base,
        "sentiment": train_run(root / "sentiment", base, sentiment, seed=0),
        "topic": train_run(root / "topic", base, topic, seed=1),
        "topic_files": topic,
    }


def dense(run: Path) -> dict[str, torch.Tensor]:
    return {name: d for name, _, d in iter_dense_deltas(run / "adapter")}


@pytest.mark.parametrize("weights", [None, [0.5, -1.0]])
def test_merged_weights_are_base_plus_weighted_deltas(runs, tmp_path, weights):
    doc = merge_adapters([runs["sentiment"], runs["topic"]], tmp_path / "m", weights=weights)
    w = weights or [1.0, 1.0]
    assert [t["name"] for t in doc["tasks"]] == ["sentiment", "topic"]
    assert [t["weight"] for t in doc["tasks"]] == w
    base = AutoModelForCausalLM.from_pretrained(str(runs["base"])).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).state_dict()
    d1, d2 = dense(runs["sentiment"]), dense(runs["topic"])
    assert set(merged) == set(base) and d1.keys() == d2.keys()
    changed = 0
    for name, w0 in base.items():
        if name in d1:
            expected = w0 + w[0] * d1[name] + w[1] * d2[name]
            torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)
            union = (d1[name] != 0) | (d2[name] != 0)
            assert torch.equal(merged[name][~union], w0[~union])  # untouched outside the union of indices
            changed += int((merged[name] != w0).sum())
        else:
            assert torch.equal(merged[name], w0), name
    assert changed > 0
    # each task's head is kept as trained
    for task in ("sentiment", "topic"):
        with safe_open(str(runs[task] / "adapter" / "adapter_model.safetensors"), "pt") as f:
            trained = f.get_tensor("head/score.weight")
        head = load_file(str(tmp_path / "m" / "heads" / f"{task}.safetensors"))
        assert torch.equal(head["weight"], trained)


def test_merging_the_same_adapters_twice_gives_the_same_bytes(runs, tmp_path):
    pair = [runs["sentiment"], runs["topic"]]
    first, second = tmp_path / "a", tmp_path / "b"
    doc = merge_adapters(pair, first)
    merge_adapters(pair, second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert Path("heads/topic.safetensors") in files
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    with safe_open(str(first / "heads" / "topic.safetensors"), "pt") as f:
        meta = f.metadata()
    assert list(meta) == ["sparta_task"] and json.loads(meta["sparta_task"]) == doc["tasks"][1]


def test_overlap_and_sign_conflicts_match_direct_computation(runs, tmp_path):
    doc = merge_adapters([runs["sentiment"], runs["topic"]], tmp_path / "m")
    (pair,) = doc["interactions"]
    sets, deltas = [], []
    for task in ("sentiment", "topic"):
        net = AutoModelForSequenceClassification.from_pretrained(str(runs["base"]), num_labels=2)
        model = SpartaModel.from_pretrained(net, runs[task] / "adapter")
        sets.append({n: set(i.tolist()) for n, i in model.delta_indices().items()})
        deltas.append(dense(runs[task]))
    overlap = conflicts = 0
    for name in sets[0]:
        both = sorted(sets[0][name] & sets[1][name])
        overlap += len(both)
        a, b = deltas[0][name].reshape(-1)[both], deltas[1][name].reshape(-1)[both]
        conflicts += int(((a > 0) & (b < 0)).sum() + ((a < 0) & (b > 0)).sum())
    na, nb = (sum(len(s) for s in x.values()) for x in sets)
    assert 0 < overlap < min(na, nb) and conflicts > 0
    assert (pair["count_a"], pair["count_b"], pair["overlap"]) == (na, nb, overlap)
    assert pair["sign_conflicts"] == conflicts and not pair["identical_indices"]
    assert pair["overlap_share_a"] == pytest.approx(overlap / na)
    assert pair["sign_conflict_share"] == pytest.approx(conflicts / overlap)
    assert pair["jaccard"] == pytest.approx(overlap / (na + nb - overlap))
    assert doc["warnings"] == []  # different seeds


@pytest.mark.parametrize("keep", [0, 1])
def test_each_head_matches_its_single_adapter_when_the_other_delta_is_zero(runs, tmp_path, keep):
    from sparta.runs import predict

    tasks = ["sentiment", "topic"]
    weights = [1.0 if i == keep else 0.0 for i in range(2)]
    merge_adapters([runs[t] for t in tasks], tmp_path / "m", weights=weights)
    merged = open_model(tmp_path / "m", device="cpu")
    run = open_model(runs[tasks[keep]], device="cpu")
    texts = ["the movie was good", "a very bad plot with music", "music", "the ending is really good music"]
    single = predict(run, [{"text": t, "label": 0} for t in texts])
    both = predict_tasks(merged, texts)
    for s, m in zip(single, both, strict=True):
        assert set(m) == set(tasks)
        assert m[tasks[keep]]["label"] == s["label"]
        for label, p in s["probabilities"].items():
            assert m[tasks[keep]]["probabilities"][label] == pytest.approx(p, abs=1e-5)
    ours = evaluate(merged, tasks[keep], "test")
    theirs = evaluate(run, None, "test")
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k] == pytest.approx(theirs[k], abs=1e-5)


def test_base_model_tasks_share_one_forward_pass(runs, tmp_path):
    merge_adapters([runs["sentiment"], runs["topic"]], tmp_path / "m")
    merged = open_model(tmp_path / "m", device="cpu")
    examples = {t: [{"text": "a good film", "label": 0}] for t in ("sentiment", "topic")}
    groups = prompt_groups(merged, examples)
    assert [g for g, _ in groups] == [["sentiment", "topic"]]
    ids = torch.tensor(groups[0][1].input_ids)
    calls = []
    merged.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    out = merged.model(ids)
    assert len(calls) == 1 and set(out) == {"sentiment", "topic"} and out["topic"].shape == (1, 2)


def test_instruct_tasks_with_different_prompts_run_one_forward_each(runs, tmp_path):
    root = tmp_path / "instruct"
    model = save_model_dir(root / "base", chat=True, tied=True)
    a = train_run(root / "a", model, runs["topic_files"], seed=0, max_steps=2)
    b = train_run(root / "b", model, runs["topic_files"], seed=1, max_steps=2, instruction="Classify: music?")
    merge_adapters([a, b], root / "m")
    merged = open_model(root / "m", device="cpu")
    examples = {t: [{"text": "a good film", "label": 0}] for t in ("a", "b")}
    assert sorted(g for g, _ in prompt_groups(merged, examples)) == [["a"], ["b"]]
    calls = []
    merged.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    (pred,) = predict_tasks(merged, ["a good film"])
    assert set(pred) == {"a", "b"} and len(calls) == 2


def test_pooling_picks_the_last_real_token_with_left_or_right_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool_last(hidden, right), hidden[[0, 1], [1, 3]])
    assert torch.equal(pool_last(hidden, left), hidden[[0, 1], [3, 3]])


def test_multihead_model_gives_the_same_logits_for_left_and_right_padding(runs, tmp_path):
    from sparta.objectives.batching import collate

    merge_adapters([runs["sentiment"], runs["topic"]], tmp_path / "m")
    model = MultiHeadModel.from_dir(tmp_path / "m")
    seqs = [[7, 8, 9], [10, 11, 12, 13, 14]]
    out = {side: model(**collate(seqs, 0, side)) for side in ("left", "right")}
    for task in ("sentiment", "topic"):
        torch.testing.assert_close(out["left"][task], out["right"][task], atol=1e-5, rtol=1e-5)


def test_same_seed_and_density_warn_about_identical_indices(runs, tmp_path):
    a = bare_adapter(tmp_path / "a", runs["base"], seed=3)
    b = bare_adapter(tmp_path / "b", runs["base"], seed=3)
    doc = merge_adapters([a, b], tmp_path / "m")
    (pair,) = doc["interactions"]
    assert pair["identical_indices"] and pair["overlap"] == pair["count_a"] == pair["count_b"]
    assert pair["overlap_share_a"] == 1.0 and pair["jaccard"] == 1.0
    assert any("SAME positions" in w and "--seed" in w for w in doc["warnings"])
    other = bare_adapter(tmp_path / "c", runs["base"], seed=4)
    (pair,) = merge_adapters([a, other], tmp_path / "m2")["interactions"]
    # independent Bernoulli(0.1) index sets overlap on about 1% of the positions
    assert pair["overlap"] == pytest.approx(pair["expected_overlap_if_independent"], rel=0.25)


def test_fingerprint_mismatch_is_rejected(runs, tmp_path):
    other_base = tmp_path / "other-base"
    save_model_dir(other_base, chat=False, tied=False)
    net = AutoModelForCausalLM.from_pretrained(str(other_base))
    with torch.no_grad():
        net.model.layers[0].mlp.down_proj.weight.add_(1.0)  # one tensor differs
    net.save_pretrained(other_base)
    foreign = bare_adapter(tmp_path / "foreign", other_base, seed=5)
    with pytest.raises(SpartaError, match=r"different base models: tensor 'model\.layers\.0\.mlp\.down_proj"):
        merge_adapters([runs["sentiment"], foreign], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_bad_inputs_give_clear_errors(runs, tmp_path):
    pair = [runs["sentiment"], runs["topic"]]
    with pytest.raises(SpartaError, match="weights has 1 values for 2 adapters"):
        merge_adapters(pair, tmp_path / "m", weights=[1.0])
    with pytest.raises(SpartaError, match="does not exist"):
        merge_adapters([tmp_path / "nope"], tmp_path / "m")
    with pytest.raises(SpartaError, match="names"):
        merge_adapters(pair, tmp_path / "m", names=["a.b", "c"])
    merge_adapters(pair, tmp_path / "m", names=["x", "x2"])
    with pytest.raises(SpartaError, match="--overwrite"):
        merge_adapters(pair, tmp_path / "m")
    doc = merge_adapters(pair, tmp_path / "m", overwrite=True)
    assert [t["name"] for t in doc["tasks"]] == ["sentiment", "topic"]
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(SpartaError, match="did not write"):
        merge_adapters(pair, tmp_path / "user", overwrite=True)
    merged = open_model(tmp_path / "m", device="cpu")
    with pytest.raises(SpartaError, match="no task 'nope'"):
        evaluate(merged, "nope")
    dup = merge_adapters([runs["topic"], runs["topic"]], tmp_path / "dup")
    assert [t["name"] for t in dup["tasks"]] == ["topic", "topic-2"]


_PLAIN_LOAD = """
import json, sys
sys.modules["sparta"] = None  # importing sparta now fails: only transformers may be used
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
path, ids = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(path).eval()
AutoTokenizer.from_pretrained(path)
with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids)).logits
print(json.dumps({"logits": logits.tolist(), "labels": model.config.id2label,
                  "sparta": [m for m in sys.modules if m.startswith("sparta") and sys.modules[m]]}))
"""


def test_export_loads_with_plain_transformers_and_matches_the_adapter(runs, tmp_path):

    out = export_run(runs["sentiment"], tmp_path / "export")
    config = (out / "config.json").read_text()
    assert "sparta" not in config.lower() and "auto_map" not in config
    assert json.loads(config)["architectures"] == ["LlamaForSequenceClassification"]
    ids = [[5, 10, 11, 17, 20, 9], [8, 22, 17, 18, 6, 7]]
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _PLAIN_LOAD, str(out), json.dumps(ids)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = json.loads(proc.stdout.strip().splitlines()[-1])
    assert plain["sparta"] == [] and plain["labels"] == {"0": "0", "1": "1"}
    run = open_model(runs["sentiment"], device="cpu")
    with torch.no_grad():
        expected = run.model(input_ids=torch.tensor(ids)).logits
    np.testing.assert_allclose(np.array(plain["logits"]), expected.numpy(), atol=1e-5)
    with pytest.raises(SpartaError, match="--overwrite"):
        export_run(runs["sentiment"], out)


def test_fit_head_improves_dev_loss_and_keeps_the_best_epoch():
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(2, 8, generator=g)
    x = torch.randn(300, 8, generator=g)
    y = (x @ w_true.T).argmax(-1)
    head = torch.nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(-w_true)  # a head that reads the features backwards
    stats = fit_head(head, (x[:200], y[:200]), (x[200:], y[200:]), lr=1e-2, epochs=30)
    with torch.no_grad():
        dev_loss = torch.nn.functional.cross_entropy(head(x[200:]), y[200:]).item()
    assert stats["dev_loss_after"] == pytest.approx(dev_loss, abs=1e-6)
    assert stats["dev_loss_after"] < stats["dev_loss_before"] / 3
    assert stats["dev_accuracy_before"] < 0.2 and stats["dev_accuracy_after"] > 0.9
    assert 1 <= stats["best_epoch"] <= stats["epochs_run"] <= 30


def test_fit_head_leaves_a_head_no_epoch_improves_unchanged():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 8, generator=g)
    y = torch.randint(0, 2, (200,), generator=g)  # labels unrelated to the features: training only overfits
    dev_x = torch.zeros(50, 8)  # every head scores these alike; a zero head is already at the best dev loss
    head = torch.nn.Linear(8, 2, bias=False)
    torch.nn.init.zeros_(head.weight)
    stats = fit_head(head, (x, y), (dev_x, torch.tensor([0, 1] * 25)), epochs=20, patience=3)
    assert stats["best_epoch"] == 0 and stats["epochs_run"] == 3
    assert torch.equal(head.weight, torch.zeros(2, 8))


def test_refit_heads_lowers_each_merged_heads_dev_loss_and_keeps_the_original(runs, tmp_path):
    out = tmp_path / "m"
    merge_adapters([runs["sentiment"], runs["topic"]], out, weights=[2.0, 2.0])  # a merge that moves features
    before = {t: load_file(str(out / "heads" / f"{t}.safetensors")) for t in ("sentiment", "topic")}
    merged = open_model(out, device="cpu")
    dev_before = {t: evaluate(merged, t, "dev") for t in before}
    report = refit_heads(out, device="cpu", lr=1e-2)
    doc = json.loads((out / "merged.json").read_text())
    merged = open_model(out, device="cpu")
    for t in before:
        stats = report[t]
        assert doc["tasks"][[x["name"] for x in doc["tasks"]].index(t)]["refit"] == stats
        assert stats["train_examples"] == 64  # the adapter's whole training split
        assert stats["dev_loss_before"] == pytest.approx(dev_before[t]["loss"], abs=1e-5)
        dev_after = evaluate(merged, t, "dev")
        assert dev_after["loss"] == pytest.approx(stats["dev_loss_after"], abs=1e-5)
        assert dev_after["loss"] <= dev_before[t]["loss"]
        original = load_file(str(out / "heads" / f"{t}.original.safetensors"))
        assert torch.equal(original["weight"], before[t]["weight"])
        changed = not torch.equal(
            load_file(str(out / "heads" / f"{t}.safetensors"))["weight"], original["weight"]
        )
        assert changed == (stats["best_epoch"] > 0)
    assert any(r["best_epoch"] > 0 and r["dev_loss_after"] < r["dev_loss_before"] for r in report.values())
    # a second re-fit starts again from the trained head, so it lands on the same head
    first = load_file(str(out / "heads" / "topic.safetensors"))["weight"]
    refit_heads(out, tasks=["topic"], device="cpu", lr=1e-2)
    assert torch.equal(load_file(str(out / "heads" / "topic.safetensors"))["weight"], first)
