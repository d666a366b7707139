"""`open_model` on every kind of directory, and `predict`'s errors on inputs that do not fit the task."""

from __future__ import annotations

import pytest

from sparta.errors import SpartaError
from sparta.runs import evaluate, examples_from_texts, open_model, predict, predict_tasks


def test_open_model_tells_the_kinds_apart(v1_dir):
    assert open_model(v1_dir / "sparta", device="cpu").kind == "run"
    assert open_model(v1_dir / "full", device="cpu").kind == "run"
    assert open_model(v1_dir / "export", device="cpu").kind == "model"
    merged = open_model(v1_dir / "merged", device="cpu")
    assert merged.kind == "merged" and list(merged.tasks) == ["sentiment", "intensity"]
    with pytest.raises(SpartaError, match="several tasks; pass --task"):
        merged.head()
    with pytest.raises(SpartaError, match="no task 'nope'"):
        evaluate(merged, "nope")


def test_a_base_model_opens_with_the_head_training_starts_from(v1_dir):
    """A chat base model + a task: the zero-shot label-word head, whose scores are the LM's label-word logits."""
    run = open_model(v1_dir / "head", device="cpu")
    base = open_model(v1_dir / "base", task="sst2", device="cpu")
    assert base.kind == "base" and base.head().instruct
    with pytest.raises(SpartaError, match="pass --task"):
        open_model(v1_dir / "base", device="cpu")
    # the head method's run started from the same label-word rows (No, Yes) of the same model
    words = [base.tokenizer.convert_tokens_to_ids(w) for w in ("No", "Yes")]
    lm_rows = base.model.get_input_embeddings().weight[words]  # tied embeddings: the LM head's rows
    assert base.model.score.weight.detach().equal(lm_rows.detach())
    assert run.model.score.weight.shape == base.model.score.weight.shape


def test_json_inputs_must_hold_the_tasks_fields(v1_dir):
    run = open_model(v1_dir / "sparta", device="cpu")
    with pytest.raises(
        SpartaError, match=r"has no field 'text'; task custom reads text \(the input has sentence\)"
    ):
        examples_from_texts(run.task, ['{"sentence": "a good film"}'])
    (pred,) = predict(run, examples_from_texts(run.task, ['{"text": "a good film", "label": "x"}']))
    assert set(pred["probabilities"]) == {"0", "1"}
    merged = open_model(v1_dir / "merged", device="cpu")
    with pytest.raises(SpartaError, match="has no field 'text'") as err:
        predict_tasks(merged, ['{"sentence": "a good film"}'])
    assert "label" not in str(err.value)  # only the user's own fields are listed
