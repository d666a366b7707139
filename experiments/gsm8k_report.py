"""The tables of the GSM8K instruction-tuning grid (`experiments/gsm8k_sft.py`) as Markdown, and its learning curves.

    python experiments/gsm8k_report.py experiments/results/gsm8k-sft [--plot curves.png]

Reads probe/<method>-lr<lr>/, main/<method>-seed<s>/ (with em250/) and zero-shot/{nll,em250}/ results.json files;
prints the probe table, the trained-cell table (test answer NLL on all 1,319 problems, exact match on the fixed
250 with its binomial standard error, trainable parameters, train time, tokens/s, peak memory) and the
SpaRTA - LoRA NLL difference per seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

NAMES = {"sparta": "SpaRTA Wv,Wo (3.47%)", "lora": "LoRA r=8 q,v", "full": "full fine-tuning"}


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def probes(root: Path) -> list[str]:
    rows = ["| method | lr | dev NLL (200) | test NLL (200) | precision |", "|---|---|---:|---:|---|"]
    found = []
    for cell in sorted((root / "probe").glob("*/results.json")):
        r = read(cell)
        method, lr = cell.parent.name.split("-lr")
        found.append((method, float(lr), r))
    best = {
        m: min((lr for mm, lr, _ in found if mm == m), key=lambda lr: _dev(found, m, lr)) for m, _, _ in found
    }
    for method, lr, r in sorted(found, key=lambda t: (list(NAMES).index(t[0]), t[1])):
        dev = r["metrics"]["dev"]["loss"]
        mark = "**" if best[method] == lr else ""
        rows.append(
            f"| {NAMES[method]} | {lr:g} | {mark}{dev:.4f}{mark} | {r['metrics']['test']['loss']:.4f} | "
            f"{r.get('precision', {}).get('name', 'fp32')} |"
        )
    return rows


def _dev(found, method: str, lr: float) -> float:
    return next(r["metrics"]["dev"]["loss"] for m, x, r in found if m == method and x == lr)


def em_cell(em: dict | None) -> str:
    if em is None:
        return "—"
    p = em["metrics"]["test"]["exact_match"]
    n = 250
    return f"{100 * p:.1f}% (± {100 * math.sqrt(p * (1 - p) / n):.1f})"


def main_table(root: Path) -> list[str]:
    rows = [
        "| model | lr | seed | trainable | test NLL (1,319) | exact match (250) | train s | target tokens/s | "
        "peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    zs, zem = read(root / "zero-shot/nll/results.json"), read(root / "zero-shot/em250/results.json")
    if zs:
        rows.append(
            f"| zero-shot (no training) | — | — | — | {zs['metrics']['test']['loss']:.4f} | {em_cell(zem)} "
            "| — | — | — |"
        )
    for cell in sorted(
        (root / "main").glob("*/results.json"),
        key=lambda p: (list(NAMES).index(p.parent.name.split("-seed")[0]), p.parent.name),
    ):
        r, em = read(cell), read(cell.parent / "em250/results.json")
        method, seed = cell.parent.name.split("-seed")
        tokens = _target_tokens(cell.parent.with_suffix(".log"))
        rate = f"{tokens / r['train_seconds']:.0f}" if tokens else "—"
        rows.append(
            f"| {NAMES[method]} | {r['config']['lr']:g} | {seed} | {r['trainable_params']:,} | "
            f"{r['metrics']['test']['loss']:.4f} | {em_cell(em)} | {r['train_seconds']:.0f} | {rate} | "
            f"{r['peak_memory_mb']:.0f} |"
        )
    return rows


def _target_tokens(log: Path) -> int | None:
    """The training split's target (loss) tokens, from the run log's "data: train N examples, T target tokens"."""
    if not log.is_file():
        return None
    for line in log.read_text().splitlines():
        if line.startswith("data: train "):
            return int(line.split(" examples, ")[1].split(" target tokens")[0].replace(",", ""))
    return None


def differences(root: Path) -> list[str]:
    lines = []
    diffs = []
    for seed in (0, 1):
        sparta, lora = (read(root / f"main/{m}-seed{seed}/results.json") for m in ("sparta", "lora"))
        if sparta and lora:
            a, b = sparta["metrics"]["test"]["loss"], lora["metrics"]["test"]["loss"]
            diffs.append(a / b - 1)
            lines.append(f"- seed {seed}: SpaRTA {a:.4f} vs LoRA {b:.4f}: {100 * (a / b - 1):+.2f}%")
    if len(diffs) > 1:
        lines.append(
            f"- mean {100 * statistics.mean(diffs):+.2f}%, spread (sd) {100 * statistics.stdev(diffs):.2f} points"
        )
    return lines


def plot(root: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted((root / "main").glob("*-seed0/log.csv"))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.5), squeeze=False)
    for ax, log in zip(axes[0], cells, strict=True):
        rows = list(csv.DictReader(log.open()))
        steps = [int(r["step"]) for r in rows]
        ax.plot(steps, [float(r["train_loss"]) for r in rows], label="train NLL")
        dev = [(int(r["step"]), float(r["dev_loss"])) for r in rows if r.get("dev_loss")]
        if dev:
            ax.plot(*zip(*dev, strict=True), "o-", label="dev NLL")
        ax.set_title(NAMES[log.parent.name.split("-seed")[0]])
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    print("\n".join(probes(args.root)), end="\n\n")
    print("\n".join(main_table(args.root)), end="\n\n")
    print("\n".join(differences(args.root)))
    if args.plot:
        plot(args.root, args.plot)


if __name__ == "__main__":
    main()
