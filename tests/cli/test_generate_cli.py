"""`sparta generate`, `sparta chat`, and `sparta export` / `merge` / `eval` of SFT runs, through `sparta.cli.main`."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from sparta.cli import main
from sparta.runs import generate_texts, open_model
from tinysftruns import write_sft_run

torch.set_num_threads(1)

PROMPTS = ["the movie was good", "a very bad plot"]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1"


@pytest.fixture(scope="module")
def sft(tmp_path_factory, instruct_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sft-cli")
    return {
        "a": write_sft_run(root / "a", instruct_model_dir, seed=0),
        "b": write_sft_run(root / "b", instruct_model_dir, seed=1),
    }


def _fails(capsys, argv, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sparta ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _expected(directory: Path, prompts: list, **kw) -> list[str]:
    return generate_texts(open_model(directory, device="cpu"), prompts, **kw)


def test_generate_streams_each_prompt_answer(sft, capsys):
    expected = _expected(sft["a"], PROMPTS, max_new_tokens=12)
    assert main(["generate", str(sft["a"]), *PROMPTS, "--max-new-tokens", "12", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # the streamer prints each answer as it comes and ends it with a newline; words are joined as decoded
    assert out == "".join(f"{text}\n" for text in expected)
    sampled = _expected(sft["a"], PROMPTS[:1], max_new_tokens=12, temperature=1.3, seed=4)
    argv = [
        "generate",
        str(sft["a"]),
        PROMPTS[0],
        "--max-new-tokens",
        "12",
        "--temperature",
        "1.3",
        "--seed",
        "4",
    ]
    assert main(argv) == 0 and capsys.readouterr().out == f"{sampled[0]}\n"


def test_generate_a_prompt_file_writes_completions(sft, tmp_path, capsys):
    turns = [
        {"role": "user", "content": "good"},
        {"role": "assistant", "content": "Yes"},
        {"role": "user", "content": "bad"},
    ]
    records = [{"prompt": PROMPTS[0], "id": 1}, {"messages": turns}, {"prompt": PROMPTS[1]}]
    file = tmp_path / "prompts.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    argv = ["generate", str(sft["b"]), "--file", str(file), "--max-new-tokens", "10", "--batch-size", "2"]
    assert main([*argv, "--output", str(tmp_path / "out.jsonl")]) == 0
    assert "wrote 3 completions" in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = _expected(sft["b"], [PROMPTS[0], turns, PROMPTS[1]], max_new_tokens=10)
    assert lines == [{**r, "completion": t} for r, t in zip(records, expected, strict=True)]
    assert main(argv) == 0  # no --output: the lines on standard output
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == lines


def test_chat_keeps_the_history_until_reset(sft, monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "stdin", io.StringIO("the movie\n\na bad plot\n/reset\na bad plot\n/exit\nmusic\n")
    )
    assert main(["chat", str(sft["a"]), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    loaded = open_model(sft["a"], device="cpu")
    (first,) = generate_texts(loaded, ["the movie"], max_new_tokens=8)
    history = [
        {"role": "user", "content": "the movie"},
        {"role": "assistant", "content": first.strip()},
        {"role": "user", "content": "a bad plot"},
    ]
    (second,) = generate_texts(loaded, [history], max_new_tokens=8)
    (fresh,) = generate_texts(loaded, ["a bad plot"], max_new_tokens=8)
    assert second != fresh  # the history changes the answer, so the comparison below means something
    assert out == [first, second, "(history cleared)", fresh]  # nothing read after /exit


def test_export_merge_and_eval_of_sft_runs(sft, tmp_path, capsys):
    assert main(["export", str(sft["a"]), "--output", str(tmp_path / "export")]) == 0
    assert "LlamaForCausalLM: load it with AutoModelForCausalLM" in capsys.readouterr().out
    assert (
        main(["merge", str(sft["a"]), str(sft["b"]), "--weights", "1,0", "--output", str(tmp_path / "m")])
        == 0
    )
    out = capsys.readouterr().out
    assert "merged 2 adapters" in out and "LM head frozen" in out and "sign conflicts" in out
    expected = _expected(sft["a"], PROMPTS[:1], max_new_tokens=12)
    for directory in ("export", "m"):
        assert main(["generate", str(tmp_path / directory), PROMPTS[0], "--max-new-tokens", "12"]) == 0
        assert capsys.readouterr().out == f"{expected[0]}\n"


def test_bad_generation_input_is_one_clear_error(sft, tmp_path, capsys):
    run = str(sft["a"])
    _fails(capsys, ["generate", run, "--file", str(tmp_path / "nope.jsonl")], "prompt file", "does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    _fails(capsys, ["generate", run, "--file", str(bad)], "bad.jsonl:2", '"prompt"', '"messages"')
    bad.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    _fails(capsys, ["generate", run, "--file", str(bad)], "bad.jsonl:1: messages[0]")
    bad.write_text("{not json\n")
    _fails(capsys, ["generate", run, "--file", str(bad)], "bad.jsonl:1 is not valid JSON")
    _fails(capsys, ["generate", run], "either PROMPT(s) or --file")
    _fails(capsys, ["generate", run, "a", "--output", str(tmp_path / "o.jsonl")], "--output goes with --file")
    _fails(capsys, ["generate", run, "a", "--max-new-tokens", "0"], "max_new_tokens must be at least 1")
    # a classification run is not a causal LM (refused from its run.json, before any model loads)
    classifier = str(FIXTURE / "sparta")
    _fails(capsys, ["generate", classifier, "a"], "holds a classification model", "language-modelling")
    _fails(capsys, ["chat", classifier], "holds a classification model")
    _fails(capsys, ["predict", run, "a"], "causal LM", "sparta generate")
