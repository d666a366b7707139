"""`sparta serve` refuses bad flags and bad adapters before it binds a port: exit code 2 and one line."""

from __future__ import annotations

import pytest

from sparta.cli import main


def _fails(capsys, argv: list[str], needle: str) -> None:
    assert main(["serve", *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sparta serve: error:") and needle in err, err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--adapter", "nonsense"], "write NAME=RUN_DIR"),
        (["--adapter", "x=RUN", "--adapter", "x=RUN"], "given twice"),
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--adapter-root", "/no/such/folder"], "is not a directory"),
    ],
)
def test_bad_flags(capsys, instruct_model_dir, flags, needle):
    _fails(capsys, [str(instruct_model_dir), *flags], needle)


def test_bad_adapters(capsys, instruct_model_dir, runs):
    base = str(instruct_model_dir)
    _fails(capsys, [base, f"--adapter=x={runs['other-base']}"], "base model mismatch")
    _fails(capsys, [base, f"--adapter=x={runs['lora']}"], "only SpaRTA adapters")
    _fails(capsys, [base, f"--adapter=x={runs['extra'].parent}"], "is not a training run")
