"""Each merge rule through `merge_adapters` on tiny classification runs: the merged weights are W0 plus what
`merge_sparse` gives (sum: bitwise the sequential weighted scatter-add sparta always did), merged.json records the
rule and each task's surviving delta mass, and mean / TIES act only where adapters share positions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sparta.adapter.io import read_sparse_deltas
from sparta.merging import Strategy, merge_adapters, merge_sparse
from sparta.runs import evaluate, open_model
from tinyclsruns import bare_adapter, topic_examples, train_run, write_task
from tinylm import save_model_dir, toy_examples

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("strategies")
    base = save_model_dir(root / "base", chat=False, tied=False)
    sentiment = write_task(root / "data-sentiment", toy_examples)
    topic = write_task(root / "data-topic", topic_examples)
    return {
        "root": root,
        "base": base,
        "sentiment": train_run(root / "sentiment", base, sentiment, seed=0),
        "topic": train_run(root / "topic", base, topic, seed=1),  # its own index set (index seed 1)
        "topic-shared": train_run(
            root / "topic-shared", base, topic, seed=1, index_seed=0
        ),  # sentiment's phi
    }


def state(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(str(path)).state_dict()


def merged_state(adapters: list[Path], output: Path, **kw) -> dict[str, torch.Tensor]:
    merge_adapters(adapters, output, **kw)
    return state(output)


def sparse_of(*runs: Path) -> list[dict]:
    return [read_sparse_deltas(r / "adapter") for r in runs]


def test_sum_is_bitwise_the_sequential_weighted_scatter_add(runs, tmp_path):
    pair, weights = [runs["sentiment"], runs["topic"]], [0.5, -1.25]
    doc = merge_adapters(pair, tmp_path / "m", weights=weights)
    merge_adapters(pair, tmp_path / "explicit", weights=weights, strategy=Strategy("sum"))
    base, merged, sparse = state(runs["base"]), state(tmp_path / "m"), sparse_of(*pair)
    for name, w0 in base.items():
        expected = w0.clone()
        for sp, w in zip(sparse, weights, strict=True):  # the previous implementation, written out
            if name in sp:
                expected.view(-1).index_add_(0, sp[name][1], (w * sp[name][2]).to(w0.dtype))
        assert torch.equal(merged[name], expected), name
    for file in ("model.safetensors", "merged.json"):
        assert (tmp_path / "m" / file).read_bytes() == (tmp_path / "explicit" / file).read_bytes()
    assert doc["strategy"] == {"name": "sum"}
    survival = doc["survival"]
    assert survival["tasks"] == {"sentiment": 1.0, "topic": 1.0}
    assert list(survival["by_strategy"]) == ["sum", "mean", "ties", "dare"]
    for rule, entry in survival["by_strategy"].items():  # each rule at its default parameters
        strategy = Strategy(rule)
        assert entry["strategy"] == strategy.describe()
        expected = merge_sparse(sparse, weights, strategy).survival
        assert list(entry["tasks"].values()) == pytest.approx(expected)
    assert all(share < 1 for share in survival["by_strategy"]["ties"]["tasks"].values())  # top 20% kept


@pytest.mark.parametrize(
    "strategy",
    [
        Strategy("mean"),
        Strategy("ties", top_k=0.3),
        Strategy("dare", drop=0.4, seed=3),
        Strategy("dare", drop=0.25, then="ties", top_k=0.5),
    ],
    ids=["mean", "ties", "dare", "dare-ties"],
)
def test_each_rule_writes_w0_plus_merge_sparse(runs, tmp_path, strategy):
    pair, weights = [runs["sentiment"], runs["topic"]], [1.0, 0.75]
    doc = merge_adapters(pair, tmp_path / "m", weights=weights, strategy=strategy)
    base, merged = state(runs["base"]), state(tmp_path / "m")
    expected = merge_sparse(sparse_of(*pair), weights, strategy)
    summed = merged_state(pair, tmp_path / "sum", weights=weights)
    differs = 0
    for name, w0 in base.items():
        if name not in expected.deltas:
            assert torch.equal(merged[name], w0), name
            continue
        union, values = expected.deltas[name]
        want = w0.clone()
        want.view(-1).index_add_(0, union, values)
        assert torch.equal(merged[name], want), name
        outside = torch.ones(w0.numel(), dtype=torch.bool)
        outside[union] = False
        assert torch.equal(merged[name].view(-1)[outside], w0.view(-1)[outside])
        differs += int((merged[name] != summed[name]).sum())
    assert differs > 0  # not the sum
    assert doc["strategy"] == strategy.describe()
    assert list(doc["survival"]["tasks"].values()) == pytest.approx(expected.survival)
    assert doc["survival"]["by_strategy"][strategy.name]["strategy"] == strategy.describe()
    saved = json.loads((tmp_path / "m" / "merged.json").read_text())
    assert saved["strategy"] == strategy.describe() and saved["survival"] == doc["survival"]
    loaded = open_model(tmp_path / "m", device="cpu")
    assert 0 <= evaluate(loaded, "topic", "dev")["accuracy"] <= 1


def _selected(sparse: dict, name: str, numel: int) -> torch.Tensor:
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[sparse[name][1]] = True
    return mask


def test_mean_and_ties_change_only_shared_positions_of_independent_index_sets(runs, tmp_path):
    pair = [runs["sentiment"], runs["topic"]]
    sa, sb = sparse_of(*pair)
    base, summed = state(runs["base"]), merged_state(pair, tmp_path / "sum")
    mean = merged_state(pair, tmp_path / "mean", strategy=Strategy("mean"))
    ties = merged_state(pair, tmp_path / "ties", strategy=Strategy("ties", top_k=1.0))
    shared_positions = 0
    for name in sa:
        w0 = base[name].view(-1)
        a, b = _selected(sa, name, w0.numel()), _selected(sb, name, w0.numel())
        alone = a ^ b
        for rule in (mean, ties):  # one adapter at a position: mean and untrimmed TIES are the sum there
            assert torch.equal(rule[name].view(-1)[alone], summed[name].view(-1)[alone]), name
        both = a & b
        shared_positions += int(both.sum())
        da, db = torch.zeros_like(w0), torch.zeros_like(w0)
        da[sa[name][1]], db[sb[name][1]] = sa[name][2], sb[name][2]
        torch.testing.assert_close(mean[name].view(-1)[both], w0[both] + (da[both] + db[both]) / 2)
    assert shared_positions > 0


def test_with_one_shared_index_set_mean_averages_every_delta(runs, tmp_path):
    pair = [runs["sentiment"], runs["topic-shared"]]
    sa, sb = sparse_of(*pair)
    assert all(torch.equal(sa[n][1], sb[n][1]) for n in sa)  # the same index seed: the same phi
    doc = merge_adapters(pair, tmp_path / "m", weights=[1.0, 2.0], strategy=Strategy("mean"))
    base, merged = state(runs["base"]), state(tmp_path / "m")
    for name, (_, flat, values) in sa.items():
        expected = base[name].clone().view(-1)
        expected[flat] += (values + 2.0 * sb[name][2]) / 2
        torch.testing.assert_close(merged[name].view(-1), expected, rtol=0, atol=1e-6)
    assert doc["survival"]["tasks"] == pytest.approx({"sentiment": 0.5, "topic-shared": 0.5})
    assert doc["interactions"][0]["identical_indices"]
    assert any("SAME positions" in w for w in doc["warnings"])
    # TIES on one index set: every disagreement in sign drops one side, so neither keeps all its mass
    ties = merge_adapters(pair, tmp_path / "t", strategy=Strategy("ties", top_k=1.0))["survival"]["tasks"]
    assert doc["interactions"][0]["sign_conflicts"] > 0 and all(s < 1 for s in ties.values())


def test_overlap_rules_on_almost_disjoint_adapters_warn_that_they_do_little(runs, tmp_path):
    a = bare_adapter(tmp_path / "a", runs["base"], seed=7, density=0.01)
    b = bare_adapter(tmp_path / "b", runs["base"], seed=8, density=0.01)
    for strategy in (Strategy("mean"), Strategy("ties"), Strategy("dare", then="ties")):
        doc = merge_adapters([a, b], tmp_path / strategy.name, strategy=strategy, overwrite=True)
        (note,) = [w for w in doc["warnings"] if "act only where adapters share positions" in w]
        assert f"--strategy {strategy.name}" in note
    for strategy in (Strategy("sum"), Strategy("dare")):
        doc = merge_adapters([a, b], tmp_path / "x", strategy=strategy, overwrite=True)
        assert not any("share positions" in w for w in doc["warnings"])
