"""`sparta memory` and `sparta rank` through the real dispatcher (exit codes, JSON, one-line errors)."""

from __future__ import annotations

import json

import pytest
import torch

import sparta.cli
from sparta.analysis.memory import PAPER_SPARSITIES
from tinyconfigs import tiny_causal_lm


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `sparta ARGS`; returns (exit code, stdout, stderr). Only this task's sub-commands are registered."""
    monkeypatch.setattr(sparta.cli, "COMMAND_MODULES", ["memory", "rank"])

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = sparta.cli.main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_paper_table(cli):
    code, out, _ = cli("memory", "--paper-table")
    assert code == 0
    assert "2B       4        16          16          8.8         6.4         5.2         4.2" in out
    assert "7B       14       56          56          30.8        22.4        18.2        14.8" in out
    code, out, _ = cli("memory", "--paper-table", "--json")
    rows = json.loads(out)
    assert [round(rows[1]["sparta"][str(s)], 1) for s in PAPER_SPARSITIES] == [56, 30.8, 22.4, 18.2, 14.8]


def test_params(cli):
    code, out, _ = cli("memory", "--params", "7B", "--density", "0.05", "--json")
    data = json.loads(out)
    assert code == 0 and data["n"] == 7e9
    assert data["paper_bytes"]["total"] == pytest.approx(7e9 * 2 + 0.05 * 7e9 * 12)
    assert data["sparta_bytes"]["total"] == pytest.approx(7e9 * 2 + 0.05 * 7e9 * 30)
    code, out, _ = cli("memory", "--params", "2e9", "--density", "0.1")
    assert code == 0 and "paper rule" in out and "sparta rule" in out and "per selected position" in out


def test_model_dir_and_measure(cli, tmp_path):
    tiny_causal_lm().save_pretrained(tmp_path / "m")  # a base LM: the score head is new
    code, out, _ = cli(
        "memory", "--model", tmp_path / "m", "--density", "0.2", "--targets", "v_proj,o_proj", "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["target_matrices"] == 4 and data["n_target"] == 2 * (16 * 32 + 32 * 32)
    code, out, _ = cli("memory", "--model", tmp_path / "m", "--density", "0.2", "--measure", "--json")
    measured = json.loads(out)["measured"]
    assert code == 0 and measured["measured"] == measured["predicted"] > 0
    code, out, _ = cli("memory", "--model", tmp_path / "m", "--density", "0.2", "--measure")
    assert "measured training state" in out and "ratio 1.0000" in out


def test_rank(cli, tmp_path):
    model = tiny_causal_lm()
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight += torch.ones(32, 32)  # rank 1
    model.save_pretrained(tmp_path / "ft")
    code, out, _ = cli("rank", tmp_path / "base", tmp_path / "ft", "--json")
    data = json.loads(out)
    assert code == 0
    q = [g for g in data["groups"] if g["matrix"] == "self_attn.q_proj"]
    assert [(g["layers"], g["rank"], g["deficiency"]) for g in q] == [("0", 0, 32), ("1", 1, 31)]
    code, out, _ = cli("rank", tmp_path / "base", tmp_path / "ft")
    assert code == 0 and "tolerance: rank = #singular values" in out and "rank deficiency" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (("memory", "--params", "7B", "--density", "2"), "density"),
        (("memory", "--params", "7B"), "--density is required"),
        (("memory", "--params", "lots", "--density", "0.1"), "--params"),
        (("memory", "--model", "/no/such/dir", "--density", "0.1"), "does not exist"),
        (("memory", "--params", "7B", "--density", "0.1", "--measure"), "--measure"),
        (("rank", "/no/such/base", "/no/such/ft"), "does not exist"),
    ],
)
def test_errors_are_one_line(cli, argv, message):
    code, out, err = cli(*argv)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
