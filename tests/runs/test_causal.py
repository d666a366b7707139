"""Causal-LM directories through the run layer: SFT runs of each method open with their adapter, base models open
for generation without a task, classifiers are refused, prompts go through the chat template, and an SFT run
exports as a plain causal LM that generates the adapter's tokens without sparta."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from sparta import SpartaError, SpartaModel
from sparta.objectives.generation import generate, generation_config
from sparta.runs import export_run, generate_texts, open_model
from sparta.runs.generation import prompt_ids
from tinysftruns import write_sft_run

torch.set_num_threads(1)

LM = "language-modelling"
IDS = torch.tensor([[2, 6, 8, 17, 20, 9], [2, 10, 11, 12, 13, 14]])
PROMPTS = ["the movie was good", "a very bad plot", "music"]


@pytest.fixture(scope="module")
def sft(tmp_path_factory, instruct_model_dir, tied_instruct_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sft")
    runs = {m: write_sft_run(root / m, instruct_model_dir, m) for m in ("sparta", "lora", "full")}
    for lm_head in ("train", "sparse"):
        runs[f"tied-{lm_head}"] = write_sft_run(
            root / f"tied-{lm_head}", tied_instruct_model_dir, lm_head=lm_head
        )
    return runs


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _by_hand(run: Path, method: str, base: Path):
    """The run's model built directly from its files, as training left it."""
    if method == "full":
        return AutoModelForCausalLM.from_pretrained(str(run / "model"))
    net = AutoModelForCausalLM.from_pretrained(str(base))
    load = SpartaModel.from_pretrained if method == "sparta" else PeftModel.from_pretrained
    return load(net, str(run / "adapter"))


@pytest.mark.parametrize("method", ["sparta", "lora", "full"])
def test_sft_runs_open_as_causal_lms_with_their_adapter(sft, instruct_model_dir, method):
    loaded = open_model(sft[method], device="cpu")
    assert loaded.kind == "run" and loaded.causal_lm and loaded.instruct and loaded.tasks == {}
    expected = _logits(_by_hand(sft[method], method, instruct_model_dir))
    torch.testing.assert_close(_logits(loaded.model), expected, rtol=1e-5, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(str(instruct_model_dir))
    assert (_logits(base) - expected).abs().max() > 1e-2  # the adapter changes the model
    assert open_model(sft[method], device="cpu", objective=LM).kind == "run"


def test_a_base_model_opens_for_generation_without_a_task(instruct_model_dir, base_model_dir):
    loaded = open_model(instruct_model_dir, device="cpu", objective=LM)
    assert loaded.kind == "base" and loaded.causal_lm and loaded.instruct and loaded.tasks == {}
    with pytest.raises(SpartaError, match="without a task; pass --task"):
        loaded.head()
    tok = loaded.tokenizer
    chat = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for p in PROMPTS
    ]
    chat = [list(c["input_ids"]) if isinstance(c, dict) else list(c) for c in chat]
    assert [prompt_ids(loaded, p) for p in PROMPTS] == chat
    plain = AutoModelForCausalLM.from_pretrained(str(instruct_model_dir)).eval()
    assert generate_texts(loaded, PROMPTS, max_new_tokens=8) == generate(plain, tok, chat, max_new_tokens=8)
    # a base model without a chat template continues the text as given (with its BOS)
    raw = open_model(base_model_dir, device="cpu", objective=LM)
    assert not raw.instruct
    assert prompt_ids(raw, "the movie") == raw.tokenizer("the movie")["input_ids"] == [6, 8]


def test_a_system_prompt_and_chat_turns_are_rendered_with_the_template(instruct_model_dir):
    loaded = open_model(instruct_model_dir, device="cpu", objective=LM)
    turns = [
        {"role": "user", "content": "good"},
        {"role": "assistant", "content": "Yes"},
        {"role": "user", "content": "bad"},
    ]
    text = loaded.tokenizer.decode(prompt_ids(loaded, turns, system="Respond Yes or No"))
    # the word-level tokenizer decodes with single spaces between tokens
    assert text == (
        "<|im_start|> system Respond Yes or No <|im_end|> <|im_start|> user good <|im_end|> "
        "<|im_start|> assistant Yes <|im_end|> <|im_start|> user bad <|im_end|> <|im_start|> assistant"
    )
    with pytest.raises(SpartaError, match=r"messages\[1\] must be an object with a role"):
        prompt_ids(loaded, [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])


def test_classifiers_are_refused_for_generation(v1_dir, tmp_path, base_model_dir):
    for name in ("sparta", "export", "merged"):
        with pytest.raises(SpartaError, match="holds a classification model, not a language-modelling one"):
            open_model(v1_dir / name, device="cpu", objective=LM)
    AutoModelForSequenceClassification.from_pretrained(str(base_model_dir), num_labels=2).save_pretrained(
        tmp_path / "classifier"
    )
    with pytest.raises(SpartaError, match="holds a classifier"):
        open_model(tmp_path / "classifier", device="cpu", objective=LM)
    classifier_run = open_model(v1_dir / "sparta", device="cpu")
    with pytest.raises(SpartaError, match="generation needs"):
        generate_texts(classifier_run, ["a"])


def test_a_prompt_too_long_for_the_context_is_a_clear_error(sft):
    loaded = open_model(sft["sparta"], device="cpu")
    with pytest.raises(SpartaError, match="passes the model's context of 128"):
        generate_texts(loaded, ["the " * 100], max_new_tokens=40)


_PLAIN_GENERATE = """
import json, sys
sys.modules["sparta"] = None  # importing sparta now fails: only transformers may be used
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {}
for path in json.loads(sys.argv[1]):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    rows = []
    for ids in json.loads(sys.argv[2]):
        new = model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=12)[0, len(ids):]
        rows.append(new.tolist())
    out[path] = {"ids": rows, "tied": model.config.tie_word_embeddings,
                 "same_storage": model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()}
print(json.dumps({"out": out, "sparta": [m for m in sys.modules if m.startswith("sparta") and sys.modules[m]]}))
"""


def _adapter_tokens(loaded, prompts: list[list[int]]) -> list[list[int]]:
    """The run's greedy new tokens, through transformers' generate with the config sparta generates with."""
    config = generation_config(loaded.tokenizer, loaded.model, 12, 0.0, 1.0)
    rows = []
    for ids in prompts:
        new = loaded.model.generate(input_ids=torch.tensor([ids]), generation_config=config)[0, len(ids) :]
        rows.append(new.tolist())  # one prompt at a time: no padding after a stop token
    return rows


def test_an_exported_sft_run_generates_the_adapters_tokens_without_sparta(sft, tmp_path):
    names = ["sparta", "lora", "full", "tied-train", "tied-sparse"]
    exports = {n: export_run(sft[n], tmp_path / n) for n in names}
    loaded = {n: open_model(sft[n], device="cpu") for n in names}
    prompts = [prompt_ids(loaded["sparta"], p) for p in PROMPTS]
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            _PLAIN_GENERATE,
            json.dumps([str(exports[n]) for n in names]),
            json.dumps(prompts),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = json.loads(proc.stdout.strip().splitlines()[-1])
    assert plain["sparta"] == []
    for name in names:
        out, config = exports[name], json.loads((exports[name] / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"] and "sparta" not in json.dumps(config).lower()
        generation = json.loads((out / "generation_config.json").read_text())
        assert loaded[name].tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
        got = plain["out"][str(out)]
        assert got["ids"] == _adapter_tokens(loaded[name], prompts), name
        texts = generate_texts(loaded[name], PROMPTS, max_new_tokens=12)
        assert texts == [loaded[name].tokenizer.decode(r, skip_special_tokens=True) for r in got["ids"]]
        exported = open_model(out, device="cpu", objective=LM)  # the run.json sidecar keeps the input format
        assert exported.kind == "model" and exported.instruct
        assert generate_texts(exported, PROMPTS, max_new_tokens=12) == texts
    for name in (
        "tied-train",
        "tied-sparse",
    ):  # the run trained an untied copy of the tied head: written untied
        got = plain["out"][str(exports[name])]
        assert got["tied"] is False and not got["same_storage"]
        with safe_open(str(exports[name] / "model.safetensors"), "pt") as f:
            head, embeddings = f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight")
        assert not torch.equal(head, embeddings)


def _sft_task(root: Path) -> dict:
    """A custom chat task (train and test JSONL files of user/assistant turns), as run.json records it."""
    words = ["the movie was good", "a very bad plot", "music scene", "the ending is really bad", "good actor"]
    rows = [
        {
            "messages": [
                {"role": "user", "content": w},
                {"role": "assistant", "content": "Yes" if "good" in w else "No"},
            ]
        }
        for w in words
    ]
    root.mkdir()
    for split in ("train", "test"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = {split: str(root / f"{split}.jsonl") for split in ("train", "test")}
    return {"name": "custom", "objective": LM, "data_files": files}


def test_an_sft_run_evaluates_its_answer_loss_and_exact_match(tmp_path, instruct_model_dir):
    from sparta.runs import evaluate
    from sparta.tasks import chat, exact_match, load_splits

    run = write_sft_run(tmp_path / "run", instruct_model_dir, task=_sft_task(tmp_path / "data"))
    loaded = open_model(run, device="cpu")
    spec, tok = loaded.head().spec, loaded.tokenizer
    assert loaded.causal_lm and spec.objective == LM
    metrics = evaluate(loaded, split="test", generate=True, max_new_tokens=4)
    examples = load_splits(spec, None, seed=0)["test"]
    # by hand: the mean NLL of the answer tokens, each predicted from the tokens before it
    nll, count = 0.0, 0
    for example in examples:
        ids, mask = chat.encode_example(spec, example, tok, True)
        logp = torch.log_softmax(_logits(loaded.model, torch.tensor([ids]))[0], -1)
        for i in range(1, len(ids)):
            if mask[i]:
                nll, count = nll - logp[i - 1, ids[i]].item(), count + 1
    assert metrics["loss"] == pytest.approx(nll / count, rel=1e-4)
    prompts = [chat.prompt_ids(spec, ex, tok, True) for ex in examples]
    texts = generate(loaded.model, tok, prompts, max_new_tokens=4)
    hits = [
        exact_match(spec, t, chat.reference_text(spec, ex)) for t, ex in zip(texts, examples, strict=True)
    ]
    assert metrics["exact_match"] == pytest.approx(sum(hits) / len(hits))
    assert set(evaluate(loaded, split="test")) == {
        "loss"
    }  # a custom SFT task scores no generations by default
