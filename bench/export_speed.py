"""Inference speed of an exported SpaRTA model vs its base model (SmolLM2-135M-Instruct); not a test.

`sparta export` merges the sparse deltas and the head into plain weights, so the exported model is an ordinary
LlamaForSequenceClassification: its forward should cost exactly what the base model's costs (ratio ~1.00).

    .venv/bin/python bench/export_speed.py [--adapter RUN_OR_ADAPTER_DIR] [--batch 4] [--length 64] [--reps 20]

Without --adapter, a 1%-density adapter with random deltas is made on the fly (speed does not depend on values).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from sparta import SpartaConfig, get_sparta_model
from sparta.models import DEFAULT_MODEL, load_model, resolve_model
from sparta.runs import export_run as export_adapter


def make_adapter(model: str, path: Path, density: float) -> Path:
    net = load_model(resolve_model(model), task="classification", num_labels=2)
    sparta = get_sparta_model(net, SpartaConfig(density=density, seed=0))
    with torch.no_grad():
        for p in sparta.delta_parameters().values():
            p.normal_(std=1e-3)
    return sparta.save_pretrained(path)


def time_one(model: torch.nn.Module, ids: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(input_ids=ids)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--adapter", help="a `sparta train` output dir or adapter dir (default: a random one)"
    )
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or make_adapter(args.model, Path(tmp) / "adapter", args.density)
        export = export_adapter(adapter, Path(tmp) / "export", model=args.model if not args.adapter else None)
        exported = AutoModelForSequenceClassification.from_pretrained(str(export)).eval()
        base = load_model(
            resolve_model(args.model), task="classification", num_labels=exported.num_labels
        ).eval()
        ids = torch.randint(
            10,
            exported.config.vocab_size,
            (args.batch, args.length),
            generator=torch.Generator().manual_seed(0),
        )
        models = {"base": base, "exported": exported}
        times: dict[str, list[float]] = {k: [] for k in models}
        for m in models.values():
            time_one(m, ids)  # warm-up
        for _ in range(args.reps):  # alternate single forwards so drift in machine load hits both alike
            for k, m in models.items():
                times[k].append(time_one(m, ids))
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} x {args.length} tokens"
    )
    for k, v in median.items():
        print(f"{k:>9}: {v:8.1f} ms / forward (median of {len(times[k])}, min {min(times[k]) * 1000:.1f})")
    print(f"exported / base: {median['exported'] / median['base']:.3f}")


if __name__ == "__main__":
    main()
