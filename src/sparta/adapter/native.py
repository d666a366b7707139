"""The native CPU kernel for the delta gradient (`sampled_dot.c`), built on first use, with a torch fallback.

The kernel is plain C (no torch headers), compiled once per machine with the system C compiler into
``$SPARTA_KERNEL_DIR`` (default ``~/.cache/sparta/kernels``) and loaded with ctypes. Built with ``-fopenmp``, it
runs on ``torch.get_num_threads()`` threads of the OpenMP runtime torch has already loaded (the same
``libgomp.so.1``, whose threads stay warm between torch's ops); without OpenMP it runs single-threaded. Where
there is no compiler, the build fails or ``SPARTA_NATIVE=0`` is set, `available()` is False and the caller
uses ``torch.sparse.sampled_addmm`` instead (same numbers up to float summation order). `status()` says which
path is in use and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("sampled_dot.c")
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-std=c11"]
TILE = 128  # tokens per tile; must match sampled_dot.c
DTYPES = (torch.float32, torch.bfloat16)

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_status: str | None = None
_openmp = False  # whether the loaded build runs threads (OpenMP: the runtime torch itself loaded)


def kernel_dir() -> Path:
    """Where built kernels are kept: `$SPARTA_KERNEL_DIR` or `~/.cache/sparta/kernels`."""
    return Path(os.environ.get("SPARTA_KERNEL_DIR") or Path.home() / ".cache" / "sparta" / "kernels")


def _machine_key(flags: list[str]) -> str:
    """What the compiled code depends on: source, flags, CPU (``-march=native``)."""
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text(errors="replace").splitlines()
        cpu = "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    parts = [SOURCE.read_bytes(), " ".join(flags).encode(), platform.machine().encode(), cpu.encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _compile(compiler: str, flags: list[str]) -> Path:
    target = kernel_dir() / f"sampled_dot-{_machine_key(flags)}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target, then rename: concurrent processes never load a half-written file
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-500:]}")
        os.replace(built, target)
    return target


def _build() -> Path:
    """The built library: with OpenMP where the compiler has it (libgomp.so.1, which then resolves to the copy
    torch has already loaded, so the kernel shares torch's thread pool), else single-threaded."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler on PATH (cc, gcc or clang)")
    try:
        return _compile(compiler, [*FLAGS, "-fopenmp"])
    except (RuntimeError, subprocess.SubprocessError):
        return _compile(compiler, FLAGS)


def _load() -> ctypes.CDLL | None:
    global _library, _status, _openmp
    with _lock:
        if _status is not None:
            return _library
        if os.environ.get("SPARTA_NATIVE", "1") == "0":
            _status = "torch.sparse.sampled_addmm (native kernel disabled by SPARTA_NATIVE=0)"
            return None
        try:
            library = ctypes.CDLL(str(_build()))
            fn = library.sparta_sampled_dot
            i64, ptr = ctypes.c_int64, ctypes.c_void_p
            fn.argtypes = [
                ptr,
                i64,
                ptr,
                i64,
                ctypes.c_int,
                i64,
                i64,
                i64,
                i64,
                ptr,
                ptr,
                ptr,
                ptr,
                ctypes.c_int,
            ]
            fn.restype = None
            _openmp = bool(library.sparta_has_openmp())
            bf16_note = (
                "bf16 on AVX512-BF16 dot products" if library.sparta_bf16_dot() else "bf16 widened to fp32"
            )
            if library.sparta_tile() != TILE:
                raise RuntimeError(f"built with TILE={library.sparta_tile()}, native.py expects {TILE}")
        except (OSError, AttributeError, RuntimeError, subprocess.SubprocessError) as err:
            _status = f"torch.sparse.sampled_addmm (native kernel unavailable: {err})"
            return None
        threading_note = "OpenMP threads" if _openmp else "single-threaded"
        _library, _status = library, f"native (sparta/adapter/sampled_dot.c, {threading_note}, {bf16_note})"
        return _library


def available() -> bool:
    """Whether the native kernel is built and loaded (building it on the first call)."""
    return _load() is not None


def status() -> str:
    """Which delta-gradient kernel CPU training uses, and why."""
    _load()
    return str(_status)


def supports(row_act: torch.Tensor, col_act: torch.Tensor, crow: torch.Tensor, col: torch.Tensor) -> bool:
    """Whether `sampled_dot` can take these operands (CPU, fp32 or bf16 alike, row-major rows, int32 CSR)."""
    return (
        row_act.device.type == "cpu"
        and row_act.dtype in DTYPES
        and col_act.dtype == row_act.dtype
        and row_act.stride(-1) == 1
        and col_act.stride(-1) == 1
        and crow.dtype == col.dtype == torch.int32
        and crow.is_contiguous()
        and col.is_contiguous()
        and available()
    )


class _Work(threading.local):
    buffer: torch.Tensor | None = None


_work = _Work()


def _work_buffer(numel: int) -> torch.Tensor:
    """This thread's tile buffers, grown to `numel` floats when needed (threads x (R + C) x TILE floats: 2.2 MB
    for SmolLM2's widest layer, 576 + 1536, on 2 threads; bf16 tiles use half)."""
    if _work.buffer is None or _work.buffer.numel() < numel:
        _work.buffer = None  # let the old one go before a bigger one is made
        _work.buffer = torch.empty(numel, dtype=torch.float32)
    return _work.buffer


def release() -> None:
    """Free this thread's tile buffers."""
    _work.buffer = None


def sampled_dot(
    row_act: torch.Tensor, col_act: torch.Tensor, crow: torch.Tensor, col: torch.Tensor
) -> torch.Tensor:
    """fp32 ``out[e] = sum_n row_act[n, i] * col_act[n, col[e]]`` for each CSR entry e = (i, col[e]).

    `row_act` (N, R) and `col_act` (N, C) are read in place (check `supports` first). Runs on
    ``torch.get_num_threads()`` threads of torch's own OpenMP pool, each on a band of rows."""
    fn = _load().sparta_sampled_dot
    n_tokens, rows = row_act.shape
    cols = col_act.shape[1]
    nnz = col.numel()
    threads = max(1, min(torch.get_num_threads() if _openmp else 1, rows, nnz // 256 + 1))
    out = torch.zeros(nnz, dtype=torch.float32)
    work = _work_buffer(threads * (rows + cols) * TILE)
    fn(
        row_act.data_ptr(),
        row_act.stride(0),
        col_act.data_ptr(),
        col_act.stride(0),
        int(row_act.dtype == torch.bfloat16),
        0,
        n_tokens,
        rows,
        cols,
        crow.data_ptr(),
        col.data_ptr(),
        out.data_ptr(),
        work.data_ptr(),
        threads,
    )
    return out
