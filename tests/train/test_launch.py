"""What `accelerate launch` starts, as the run log reports it: `--multi_gpu --num_processes 2` gives two CPU
processes on gloo (the documented command), `--cpu --num_processes 2` gives one, and the log says why."""

import os
import socket
import sys
from pathlib import Path

import pytest

from sparta.train.distributed import Runtime
from tinylm import run_launch

SCRIPT = """
import os, sys
from sparta.train.distributed import Runtime, launched_distributed
rt = Runtime.from_launch("cpu") if launched_distributed() else Runtime.single()
os.write(sys.stdout.fileno(), f"LOG {rt.describe()}\\n".encode())  # one write: the ranks share the pipe
"""


def _launch(tmp_path: Path, *flags: str) -> list[str]:
    script = tmp_path / "describe.py"
    script.write_text(SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *flags,
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
        str(script),
    ]
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    proc = run_launch(launch, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.removeprefix("LOG ") for line in proc.stdout.splitlines() if line.startswith("LOG ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines


def test_multi_gpu_flag_starts_two_cpu_processes(tmp_path):
    lines = _launch(tmp_path, "--multi_gpu")
    assert len(lines) == 2 and all(
        line.startswith("processes: 2 (MULTI_CPU, gloo backend, cpu") for line in lines
    )


def test_cpu_flag_starts_one_process_and_the_log_says_so(tmp_path):
    (line,) = _launch(tmp_path, "--cpu")
    assert line.startswith(
        "processes: 1 (no distributed launch); `accelerate launch --cpu` starts one process"
    )
    assert "--multi_gpu --num_processes N" in line


def test_a_plain_process_says_one(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert Runtime.single().describe() == "processes: 1 (no distributed launch)"


@pytest.fixture(autouse=True)
def _no_cuda(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
