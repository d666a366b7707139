"""`make bench`: step time and peak memory of SpaRTA and its baselines on SmolLM2, batch 8 x 64, CPU.

Every method runs in its own process (bench/worker.py), in R interleaved rounds (m1, m2, ..., m1, m2, ...);
the table shows medians over rounds and ratios to PEFT LoRA r=8 on q,v. The step-time targets (and merged vs base
inference) are then also measured paired (both methods in one process, steps alternated), which is what they are judged on; the targets
are printed, not asserted. Writes bench/results/latest.md and latest.json.

    python bench/run.py [--rounds R] [--warmup W] [--steps S] [--pair-steps P] [--methods a,b,...] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
WORKER = BENCH_DIR / "worker.py"
RESULTS = BENCH_DIR / "results"
sys.path.insert(0, str(BENCH_DIR))
from worker import METHODS  # noqa: E402

BASE = "lora"
# (description, method, key, reference method or None, bound): method/reference <= bound, or value <= bound
TARGETS = [
    ("SpaRTA v,o step time <= 1.0 x LoRA", "sparta-vo", "step_s", BASE, 1.0),
    ("SpaRTA v,o peak RSS <= LoRA peak RSS", "sparta-vo", "peak_rss_mb", BASE, 1.0),
    ("SpaRTA 5% step <= 0.75 x peft-sparta 5%", "sparta-all-5", "step_s", "peft-sparta-all-5", 0.75),
    ("SpaRTA v,o adapter (seed+bf16) <= 2.2 B/param", "sparta-vo", "adapter_bytes_per_param", None, 2.2),
    ("merged inference forward <= 1.05 x base (~1.0)", "infer-merged", "step_s", "infer-base", 1.05),
]
# step-time ratios that are also measured paired (both methods in one process, steps alternated A B B A ...,
# training steps or inference forwards):
# on a shared machine the rounds' ratio of medians moves by +-10%, the paired ratio by a few percent
PAIRS = [("sparta-vo", BASE), ("sparta-all-5", "peft-sparta-all-5"), ("infer-merged", "infer-base")]


def run_one(method: str, args: argparse.Namespace, steps: int | None = None) -> dict:
    """One worker process (`method` may be a pair A:B); its JSON result (with `error` set when it failed)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(WORKER), method, "--json", str(out)]
        cmd += [
            "--warmup",
            str(args.warmup),
            "--steps",
            str(steps or args.steps),
            "--threads",
            str(args.threads),
        ]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            stderr = proc.stderr
        except subprocess.TimeoutExpired:
            return {"method": method, "error": f"timed out after {args.timeout} s", "load_before": load}
        info = json.loads(out.read_text()) if out.is_file() else {"method": method}
        if proc.returncode and "error" not in info:
            info["error"] = f"worker exited {proc.returncode}: {stderr.strip()[-500:]}"
    info.update(wall_s=time.perf_counter() - t0, load_before=load)
    return info


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method: medians over the successful rounds (plus the first error, if any)."""
    summary = {}
    keys = [
        "step_s",
        "cpu_s",
        "forward_s",
        "backward_s",
        "optimizer_s",
        "peak_rss_mb",
        "train_hwm_mb",
        "rss_load_mb",
    ]
    for method, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        row: dict = {"method": method, "description": METHODS[method], "rounds_ok": len(ok)}
        if ok:
            row.update({k: median_of(ok, k) for k in keys})
            row["step_s_min"] = min(r["step_s"] for r in ok)
            row["step_s_max"] = max(r["step_s"] for r in ok)
            row["peak_rss_mb_range"] = [min(r["peak_rss_mb"] for r in ok), max(r["peak_rss_mb"] for r in ok)]
            for k in (
                "trainable_params",
                "adapter_bytes",
                "adapter_bytes_per_param",
                "adapter_format",
                "shira_r",
            ):
                if k in ok[0]:
                    row[k] = ok[0][k]
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            row["error"] = errors[0]
        summary[method] = row
    return summary


def ratio(summary: dict, method: str, key: str, ref: str) -> float | None:
    a, b = summary.get(method, {}).get(key), summary.get(ref, {}).get(key)
    return a / b if a is not None and b else None


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def check_targets(summary: dict, paired: dict[str, dict]) -> list[str]:
    """One line per target; a step-time ratio that was measured paired is judged on the paired median."""
    lines = []
    for text, method, key, ref, bound in TARGETS:
        value = summary.get(method, {}).get(key)
        measured = value if ref is None else ratio(summary, method, key, ref)
        pair = paired.get(f"{method}:{ref}", {}) if key == "step_s" else {}
        if "ratio_median" in pair:
            low, high = pair["ratio_iqr"]
            verdict = "PASS" if pair["ratio_median"] <= bound else "FAIL"
            rounds = "" if measured is None else f"; rounds' medians: {measured:.3f}"
            lines.append(
                f"- [{verdict}] {text}: {pair['ratio_median']:.3f} x {ref} paired "
                f"(IQR {low:.3f}-{high:.3f} over {len(pair['step_times'][method])} step pairs{rounds})"
            )
            continue
        if measured is None:
            lines.append(f"- [n/a] {text}: not measured")
            continue
        verdict = "PASS" if measured <= bound else "FAIL"
        shown = f"{measured:.3f}" + ("" if ref is None else f" x {ref}")
        lines.append(f"- [{verdict}] {text}: {shown}")
    return lines


def render_paired(paired: dict[str, dict]) -> list[str]:
    if not paired:
        return []
    rows = [
        "Paired step time (both methods in one process, their steps alternated A B B A ...):",
        "",
        "| A | B | A step s | B step s | A / B, median of step pairs (IQR) |\n|---|---|---:|---:|---:|",
    ]
    for name, info in paired.items():
        a, b = name.split(":")
        if "error" in info:
            rows.append(f"| {a} | {b} | error: {info['error']} | | |")
            continue
        low, high = info["ratio_iqr"]
        rows.append(
            f"| {a} | {b} | {info['step_s'][a]:.3f} | {info['step_s'][b]:.3f} "
            f"| {info['ratio_median']:.3f} ({low:.3f}–{high:.3f}) |"
        )
    return [*rows, ""]


def render(summary: dict, meta: dict, paired: dict[str, dict]) -> str:
    head = (
        "| method | trainable params | step s (min–max) | × LoRA | CPU s (× LoRA) | peak RSS MB | × LoRA "
        "| RSS after load MB | fwd / bwd / opt s | adapter B/param |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows, infer = [head], []
    for method, row in summary.items():
        if "step_s" not in row:
            rows.append(f"| {method} | — | error: {row.get('error', '?')} | | | | | | | |")
            continue
        if method.startswith("infer-"):
            infer.append(
                f"| {method} | {row['step_s']:.3f} ({row['step_s_min']:.3f}–{row['step_s_max']:.3f}) "
                f"| {fmt(ratio(summary, method, 'step_s', 'infer-base'), '.3f')} | {row['peak_rss_mb']:.0f} |"
            )
            continue
        phases = "/".join(fmt(row.get(k), ".2f") for k in ("forward_s", "backward_s", "optimizer_s"))
        bpp = row.get("adapter_bytes_per_param")
        cpu = f"{fmt(row.get('cpu_s'), '.3f')} ({fmt(ratio(summary, method, 'cpu_s', BASE), '.2f')})"
        rows.append(
            f"| {method} | {row['trainable_params']:,} | {row['step_s']:.3f} ({row['step_s_min']:.2f}–{row['step_s_max']:.2f}) "
            f"| {fmt(ratio(summary, method, 'step_s', BASE), '.2f')} | {cpu} | {row['peak_rss_mb']:.0f} "
            f"| {fmt(ratio(summary, method, 'peak_rss_mb', BASE), '.2f')} | {row['rss_load_mb']:.0f} | {phases} "
            f"| {fmt(bpp, '.3f')}{'' if bpp is None else ' (' + row['adapter_format'] + ')'} |"
        )
    out = [
        f"# SpaRTA benchmark ({meta['date']})",
        "",
        f"SmolLM2-135M-Instruct (fp32) as a 2-label classifier, batch {meta['batch']}, CPU ({meta['cpu']}), "
        f"torch {meta['torch']}, {meta['threads']} threads; {meta['rounds']} interleaved rounds of "
        f"{meta['warmup']} warm-up + {meta['steps']} timed AdamW steps per process; medians over rounds of the "
        f"per-process medians. Budget: LoRA r=8 on q,v = {meta.get('budget', '?'):,} params "
        f"(SpaRTA v,o density {meta.get('vo_density', float('nan')):.5f}). Load average (1 min) before each "
        f"run: min {meta['load_min']:.2f}, median {meta['load_median']:.2f}, max {meta['load_max']:.2f}.",
        "",
        *rows,
        "",
        "Inference forward (no grad, batch 8 × 64):",
        "",
        "| method | forward s (min–max) | × base | peak RSS MB |\n|---|---:|---:|---:|",
        *infer,
        "",
        *render_paired(paired),
        "Targets:",
        "",
        *check_targets(summary, paired),
        "",
    ]
    return "\n".join(out)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per worker process")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS)
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 1 warm-up + 2 timed steps (development)"
    )
    parser.add_argument(
        "--pair-steps",
        type=int,
        default=16,
        help="timed step pairs of each paired run (0: none); pairs: "
        + ", ".join(f"{a}:{b}" for a, b in PAIRS),
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.md and latest.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.steps, args.pair_steps = 1, 1, 2, 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or min(args.rounds, args.steps) < 1 or args.warmup < 0:
        parser.error(
            f"unknown methods {unknown}" if unknown else "need methods, rounds >= 1, steps >= 1, warmup >= 0"
        )

    import torch

    results: dict[str, list[dict]] = {m: [] for m in methods}
    started = time.perf_counter()
    for r in range(args.rounds):
        for method in methods:
            info = run_one(method, args)
            results[method].append(info)
            status = info.get("error") or (
                f"{info['step_s']:.3f} s/step, peak RSS {info['peak_rss_mb']:.0f} MB"
            )
            print(
                f"[round {r + 1}/{args.rounds}] {method:18s} {status} "
                f"(load {info['load_before']:.2f}, {info.get('wall_s', 0):.0f} s)",
                flush=True,
            )
    paired: dict[str, dict] = {}
    for a, b in PAIRS:
        if args.pair_steps > 0 and a in methods and b in methods:
            info = paired[f"{a}:{b}"] = run_one(f"{a}:{b}", args, steps=args.pair_steps)
            status = info.get("error") or f"{a} / {b} = {info['ratio_median']:.3f} (median of step pairs)"
            print(f"[paired] {status} ({info.get('wall_s', 0):.0f} s)", flush=True)
    summary = summarize(results)
    loads = [i["load_before"] for runs in results.values() for i in runs]
    first_ok = next((i for runs in results.values() for i in runs if "budget" in i), {})
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "batch": "8 × 64",
        "threads": args.threads,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "steps": args.steps,
        "pair_steps": args.pair_steps,
        "budget": first_ok.get("budget"),
        "vo_density": first_ok.get("vo_density"),
        "load_min": min(loads),
        "load_median": statistics.median(loads),
        "load_max": max(loads),
        "load_after": os.getloadavg()[0],
        "total_s": time.perf_counter() - started,
    }
    text = render(summary, meta, paired)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "latest.md", text)
    raw = {"meta": meta, "summary": summary, "paired": paired, "runs": results}
    write_atomic(args.out / "latest.json", json.dumps(raw, indent=1, default=str))
    print(f"wrote {args.out / 'latest.md'} and latest.json ({meta['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
