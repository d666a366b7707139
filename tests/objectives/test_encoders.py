"""Encoder models (BERT-like) are run as encoders: a two-field task is a sentence pair (the tokenizer's pair
encoding, with segment ids), inputs are truncated keeping their first token, and the model's own pooler trains
with the head (SpaRTA, LoRA, head-only), on a tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForPreTraining, BertTokenizerFast

from sparta.models import is_encoder
from sparta.objectives.classification import encode_split
from sparta.tasks import get_task
from sparta.train import TrainConfig, train
from tinylm import WORDS, toy_examples

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(SPECIAL + [w.lower() for w in WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    BertForPreTraining(config).save_pretrained(path)  # a pretraining checkpoint: it has the pooler
    tokenizer.save_pretrained(path)
    return path


def pair_rows(n: int, seed: int) -> list[dict]:
    """label 1 iff the second sentence is the first one's sentiment word ("good"/"bad") repeated."""
    rows = []
    for i, row in enumerate(toy_examples(n, seed)):
        word = "good" if "good" in row["text"].split() else "bad"
        other = word if i % 2 else ("bad" if word == "good" else "good")
        rows.append({"sentence1": row["text"], "sentence2": f"the movie was {other}", "label": i % 2})
    return rows


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bert")
    files = {}
    for split, n, seed in (("train", 32, 1), ("dev", 8, 2), ("test", 8, 3)):
        files[f"{split}_file"] = str(root / f"{split}.jsonl")
        Path(files[f"{split}_file"]).write_text("".join(json.dumps(r) + "\n" for r in pair_rows(n, seed)))
    return {"model": tiny_bert_dir(root / "model"), "files": files}


def test_a_two_field_task_is_encoded_as_a_sentence_pair(bert):
    tokenizer = BertTokenizerFast.from_pretrained(str(bert["model"]))
    task = get_task("mrpc")
    example = {"sentence1": "the movie was good", "sentence2": "a bad plot", "label": 1}
    enc = encode_split([example], task, tokenizer, instruct=False, encoder=True)
    expected = tokenizer("the movie was good", "a bad plot")
    assert enc.input_ids == [expected["input_ids"]] and enc.token_type_ids == [expected["token_type_ids"]]
    assert set(enc.token_type_ids[0]) == {0, 1}
    as_decoder = encode_split([example], task, tokenizer, instruct=False)
    assert as_decoder.token_type_ids is None and as_decoder.input_ids != enc.input_ids  # one labelled text
    cut = encode_split([example], task, tokenizer, instruct=False, max_length=6, truncate=True, encoder=True)
    assert (
        len(cut.input_ids[0]) == 6 and cut.input_ids[0][0] == tokenizer.cls_token_id
    )  # the pooled token kept


def test_encoders_are_told_apart_from_decoders():
    from tinyconfigs import tiny_llama_config

    assert is_encoder(BertConfig()) and not is_encoder(tiny_llama_config())


@pytest.mark.parametrize("method", ["sparta", "lora", "head"])
def test_the_pooler_trains_with_the_head(bert, tmp_path, method):
    cfg = TrainConfig(
        task="custom",
        text_fields=["sentence1", "sentence2"],
        model=str(bert["model"]),
        method=method,
        density=0.2,
        max_steps=3,
        batch_size=8,
        lr=1e-2,
        zero_shot=False,
        progress=False,
        device="cpu",
        output=str(tmp_path / "run"),
        **bert["files"],
        targets=["query", "value"] if method == "lora" else None,
    )
    results = train(cfg)
    from sparta.runs import open_model

    base = BertForPreTraining.from_pretrained(str(bert["model"])).bert.pooler.dense.weight
    run = open_model(tmp_path / "run", device="cpu")
    model = run.model.merge_and_unload() if hasattr(run.model, "merge_and_unload") else run.model
    pooler = model.bert.pooler.dense.weight
    assert not torch.equal(pooler, base)  # trained, and saved and loaded with the run
    assert results["metrics"]["test"]["loss"] > 0
