"""`export_run` for every method: the export loads with plain transformers and gives the run's own logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from sparta.errors import SpartaError
from sparta.runs import export_run, open_model
from sparta.runs.layout import RUN_FILE

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1"


@pytest.mark.parametrize("method", ["sparta", "sparta-coo16-bf16", "lora", "dora", "head", "full"])
def test_every_method_exports_a_plain_classifier_with_the_runs_logits(v1_dir, tmp_path, method):
    out = export_run(v1_dir / method, tmp_path / "export")
    assert "sparta" not in (out / "config.json").read_text().lower()
    plain = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert type(plain).__name__ == "LlamaForSequenceClassification"
    assert not any("lora" in n for n, _ in plain.named_parameters())  # PEFT's layers folded into W
    run = open_model(v1_dir / method, device="cpu")
    ids = torch.tensor([[5, 10, 11, 17, 20, 9], [8, 22, 17, 18, 6, 7]])
    with torch.no_grad():
        expected = run.model(input_ids=ids).logits
        got = plain(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert plain.config.id2label == {0: "0", 1: "1"}
    exported = open_model(out, device="cpu")  # the run.json sidecar keeps the input format
    assert exported.kind == "model" and exported.head().instruct == run.head().instruct
    assert (out / RUN_FILE).is_file()


def test_export_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(SpartaError, match="neither a training run"):
        export_run(tmp_path / "notes", tmp_path / "out")
