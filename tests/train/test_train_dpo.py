"""`sparta train` with the preference (DPO) objective on a tiny instruct Llama and a custom prompt/chosen/rejected
task: every method trains, the precomputed reference equals the on-the-fly one and is reused on resume, resume
is bitwise, --init-from starts from an SFT run whose model is then the reference, and hh-harmless's carve."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from sparta.fileio import read_json, read_jsonl
from sparta.methods import get_method
from sparta.objectives import Preference
from sparta.objectives.preference import REFERENCE_FILE, reference_logps, sequence_logps
from sparta.runs.causal import merged_run_model, open_causal_run
from sparta.train import TrainConfig, train
from tinylm import FILLER, make_tokenizer, run_launch


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": " ".join(rng.sample(FILLER, rng.randint(2, 5))),
            "chosen": "Yes good .",
            "rejected": rng.choice(["No bad !", "bad"]),
        }
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def pref_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pref")
    files = {}
    for split, n, seed in (("train", 24, 1), ("dev", 6, 2), ("test", 6, 3)):
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in _pairs(n, seed)))
    (root / "bad.jsonl").write_text(
        files["train"].read_text() + json.dumps({"prompt": "a", "chosen": "good", "rejected": "good"}) + "\n"
    )
    return files | {"bad": root / "bad.jsonl"}


@pytest.fixture
def dpo_config(pref_files, tied_instruct_model_dir, tmp_path):
    def make(**overrides) -> TrainConfig:
        values = dict(
            task="custom",
            train_file=str(pref_files["train"]),
            dev_file=str(pref_files["dev"]),
            test_file=str(pref_files["test"]),
            model=str(tied_instruct_model_dir),
            output=str(tmp_path / "run"),
            batch_size=4,
            max_steps=4,
            eval_every=2,
            lr=1e-2,
            density=0.2,
            progress=False,
            device="cpu",
            max_new_tokens=3,
        )
        return TrainConfig(**(values | overrides))

    return make


@pytest.mark.parametrize("method", ["sparta", "lora", "full"])
def test_every_method_trains_with_dpo(dpo_config, method):
    result = train(dpo_config(method=method))
    assert result["objective"] == "preference" and result["config"]["beta"] == 0.1
    zero, dev = result["zero_shot"]["dev"], result["metrics"]["dev"]
    assert zero["loss"] == pytest.approx(0.6931, abs=1e-4) and 0 <= zero["logprob_preference"] <= 1
    assert {"preference_accuracy", "reward_margin", "kl_estimate", "generation_length"} <= set(dev)
    assert dev["loss"] < zero["loss"] and dev["reward_margin"] > 0 and dev["kl_estimate"] != 0
    assert result["data"]["pairs"]["train"] == {"pairs": 24, "dropped_too_long": 0, "dropped_invalid": {}}
    assert result["data"]["source"]["kind"] == "files"


@pytest.mark.parametrize("method", ["sparta", "lora", "full"])
def test_sparta_eval_of_a_dpo_run_gives_its_final_test_metrics(dpo_config, tmp_path, method, capsys):
    """The run layer encodes the pairs as the run did and measures the policy against the run's reference (the
    disabled adapter; full fine-tuning: the base model it started from), through `sparta eval`."""
    from sparta.cli import main
    from sparta.runs import evaluate, open_model

    result = train(dpo_config(method=method, eval_generate=False))
    test = result["metrics"]["test"]
    assert "generation_length" not in test  # --eval-generate false: no generation in the final metrics
    again = evaluate(open_model(tmp_path / "run"), split="test")
    assert again.keys() == test.keys() and again == pytest.approx(test, rel=1e-5, abs=1e-6)
    assert main(["eval", str(tmp_path / "run"), "--output", str(tmp_path / "eval")]) == 0
    saved = read_json(tmp_path / "eval" / "results.json")["metrics"]["test"]
    assert (
        saved == pytest.approx(test, rel=1e-5, abs=1e-6) and "preference_accuracy" in capsys.readouterr().out
    )
    # each test pair's verdict, written by training and again by `sparta eval --output`: the same pairs
    trained, evaluated = (
        read_jsonl(d / "examples" / "test.jsonl") for d in (tmp_path / "run", tmp_path / "eval")
    )
    assert [r["key"] for r in trained] == [r["key"] for r in evaluated] and len(trained) > 1
    assert [r["correct"] for r in trained] == [r["correct"] for r in evaluated]
    assert sum(r["correct"] for r in trained) / len(trained) == pytest.approx(test["preference_accuracy"])


def test_bad_pairs_are_counted_in_results(dpo_config, pref_files):
    result = train(dpo_config(train_file=str(pref_files["bad"]), max_steps=1, max_length=12))
    train_report = result["data"]["pairs"]["train"]
    assert train_report["dropped_invalid"] == {"identical": 1}
    assert (
        0 < train_report["dropped_too_long"] < 24
        and train_report["pairs"] == 24 - train_report["dropped_too_long"]
    )
    assert result["data"]["pairs"]["dev"]["dropped_too_long"] > 0  # dev and test keep to --max-length too


def test_the_precomputed_reference_equals_the_on_the_fly_one(dpo_config, tmp_path):
    fly = train(dpo_config(output=str(tmp_path / "fly")))
    pre = train(dpo_config(output=str(tmp_path / "pre"), precompute_reference=True))
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "pre" / REFERENCE_FILE))
    assert {k: tuple(v.shape) for k, v in stored.items()} == {"train": (24, 2), "dev": (6, 2), "test": (6, 2)}
    for h1, h2 in zip(fly["history"], pre["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-6)
    for k, v in fly["metrics"]["test"].items():
        assert pre["metrics"]["test"][k] == pytest.approx(v, rel=1e-5, abs=1e-6)


class Crash(Exception):
    pass


@pytest.mark.parametrize("precompute", [False, True])
def test_an_interrupted_dpo_run_resumes_bitwise(dpo_config, tmp_path, precompute):
    extra = dict(max_steps=6, eval_every=2, precompute_reference=precompute)
    a = train(dpo_config(**extra, output=str(tmp_path / "A")))

    def crash(step: int) -> None:
        if step == 3:
            raise Crash

    cfg = dpo_config(**extra, save_every=2, output=str(tmp_path / "B"))
    with pytest.raises(Crash):
        train(cfg, on_step=crash)
    cfg.resume = True
    b = train(cfg)
    assert b["resumed_from_step"] == 2
    assert (b["metrics"], b["history"], b["zero_shot"]) == (a["metrics"], a["history"], a["zero_shot"])
    files = lambda p: {f.name: f.read_bytes() for f in sorted((p / "adapter").iterdir())}  # noqa: E731
    assert files(tmp_path / "B") == files(tmp_path / "A")


def test_init_from_an_sft_run_makes_it_the_reference(dpo_config, tied_instruct_model_dir, tmp_path):
    """SpaRTA: the SFT deltas merged into the base weights are the new W0, so the DPO run's disabled adapter is
    exactly the SFT model (no copy), and the reopened DPO run is built on it."""
    sft_file = tmp_path / "sft.jsonl"
    sft_file.write_text(
        "".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in _pairs(16, 5))
    )
    sft = train(
        dpo_config(
            train_file=str(sft_file),
            dev_file=None,
            test_file=None,
            objective="language-modelling",
            output=str(tmp_path / "sft"),
            lr=3e-2,
            zero_shot=False,
        )
    )
    sft_dir = Path(sft["adapter_path"]).parent
    sft_model, tok = open_causal_run(sft_dir, read_json(sft_dir / "run.json"), torch.float32)
    data = Preference().encode(_pairs(4, 9), None, make_tokenizer(chat=True), True)
    idx, pad = [0, 1, 2, 3], tok.pad_token_id
    with torch.no_grad():
        sft_logps = sequence_logps(sft_model.eval(), data, idx, pad, "right", "cpu")[0]
    method = get_method("sparta")
    net = method.apply(merged_run_model(sft_dir, torch.float32), dpo_config(), Preference())
    with torch.no_grad():
        for d in net.delta_parameters().values():
            d.add_(0.05)
    data.reference = (net, method)
    assert torch.equal(reference_logps(data, idx, pad, "right", "cpu"), sft_logps)

    dpo = train(dpo_config(init_from=str(sft_dir), output=str(tmp_path / "dpo")))
    info = read_json(tmp_path / "dpo" / "run.json")
    assert info["init_from"] == str(sft_dir.resolve())
    reopened, _ = open_causal_run(tmp_path / "dpo", info, torch.float32)
    with torch.no_grad(), reopened.disable_adapter():
        assert torch.equal(sequence_logps(reopened.eval(), data, idx, pad, "right", "cpu")[0], sft_logps)
    assert dpo["metrics"]["dev"]["loss"] < dpo["zero_shot"]["dev"]["loss"]


def test_hh_harmless_is_carved_before_any_length_filter(shared_data):
    from sparta.tasks import get_task, load_splits
    from sparta.tasks.data import data_source

    if not (shared_data / "hh-rlhf-harmless" / "test.jsonl.gz").is_file():
        pytest.skip("hh-rlhf-harmless not in the shared data")
    task = get_task("hh-harmless")
    splits = load_splits(task, shared_data)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1812, "dev": 250, "test": 250}
    assert data_source(task, shared_data)["kind"] == "carved local file"
    assert "1,812" in task.description


@pytest.mark.slow
def test_two_processes_match_one_for_dpo(dpo_config, tmp_path):
    """DPO under DDP (accelerate launch, 2 CPU processes x 2 pairs) equals 1 process x 4 pairs: the reference (the
    disabled adapter) runs on the unwrapped model of each rank, the pairs' losses average over the global batch."""
    import os
    import socket
    import sys

    from tinylm import assert_same_run

    one = train(
        dpo_config(
            batch_size=4, eval_generate=False, zero_shot=False, log_every=1, output=str(tmp_path / "one")
        )
    )
    cfg = dpo_config(batch_size=2, output=str(tmp_path / "two"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        "train",
        "--task",
        "custom",
        "--objective",
        "preference",
        "--train-file",
        cfg.train_file,
        "--dev-file",
        cfg.dev_file,
        "--test-file",
        cfg.test_file,
        "--model",
        cfg.model,
        "--output",
        cfg.output,
        "--method",
        "sparta",
        "--density",
        "0.2",
        "--batch-size",
        "2",
        "--max-steps",
        "4",
        "--eval-every",
        "2",
        "--lr",
        "0.01",
        "--device",
        "cpu",
        "--no-progress",
        "--no-zero-shot",
        "--eval-generate",
        "false",
        "--log-every",
        "1",
    ]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(Path(sys.executable).parent / "sparta"),
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = run_launch(launch, env=env, capture_output=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    two = read_json(Path(cfg.output) / "results.json")
    assert two["processes"] == 2 and two["objective"] == "preference"
    assert_same_run(one, two)
    assert two["metrics"]["test"]["preference_accuracy"] == pytest.approx(
        one["metrics"]["test"]["preference_accuracy"]
    )
    # each rank scored its share of the test pairs; rank 0 wrote them all, in split order
    mine, theirs = (read_jsonl(Path(d) / "examples" / "test.jsonl") for d in (tmp_path / "one", cfg.output))
    assert [r["key"] for r in mine] == [r["key"] for r in theirs]
    assert [r["correct"] for r in mine] == [r["correct"] for r in theirs]


def test_a_dpo_run_generates_exports_and_merges_as_the_causal_lm_it_is(dpo_config, tmp_path):
    """An aligned run is a causal LM like an SFT run: `sparta generate` opens it, `sparta export` writes a plain
    causal LM whose greedy text is the run's, and its SpaRTA adapter merges as an SFT adapter does."""
    from sparta.cli import main
    from sparta.merging.sources import open_adapter
    from sparta.runs import open_model
    from sparta.runs.export import export_run
    from sparta.runs.generation import generate_texts
    from sparta.serve.adapters import check_sparta_run

    train(dpo_config(eval_generate=False))
    run = tmp_path / "run"
    loaded = open_model(run, objective="language-modelling")
    prompts = ["alpha beta", "gamma"]
    texts = generate_texts(loaded, prompts, max_new_tokens=4)
    exported = open_model(export_run(run, tmp_path / "export"), objective="language-modelling")
    assert generate_texts(exported, prompts, max_new_tokens=4) == texts and len(texts) == 2
    assert main(["generate", str(run), "alpha beta", "--max-new-tokens", "2"]) == 0
    assert open_adapter(run).causal_lm and check_sparta_run(run)["objective"] == "preference"
