"""`sparta merge`: add SpaRTA adapters of one base model into a multi-head model (paper section 8), or SFT adapters
into one causal LM; `sparta eval`, `sparta predict` and `sparta generate` open its output like any other
directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparta.errors import SpartaError
from sparta.fileio import write_json
from sparta.merging import compare_with_single, merge_adapters, refit_heads, tune_merge
from sparta.merging.strategies import STRATEGIES, strategy_from_options
from sparta.merging.tuning import WEIGHT_GRID
from sparta.runs import read_merged
from sparta.runs.layout import MERGED_FILE

EPILOG = """examples:
  sparta merge runs/sst2 runs/cola --output merged/sst2-cola
  sparta merge runs/sst2 runs/cola --output merged/sst2-cola --eval --max-eval-samples 500
  sparta merge runs/sst2 runs/cola --output merged/sst2-cola --refit-heads --eval
  sparta merge runs/sst2 runs/cola --output merged/ties --strategy ties --top-k 0.2
  sparta merge runs/sst2 runs/cola --output merged/dare --strategy dare --drop 0.5 --dare-then ties --dare-seed 1
  sparta merge runs/sst2 runs/cola --output merged/tuned --tune-weights --max-eval-samples 500 --eval
  sparta predict merged/sst2-cola "the movie was a delight"
  sparta eval merged/sst2-cola --task cola
  sparta merge runs/gsm8k runs/chat --weights 0.5,0.5 --output merged/sft && sparta generate merged/sft "Hi"

ADAPTER is a `sparta train` output dir (run.json + adapter/) or a bare adapter dir. The output dir is a Hugging Face
checkpoint of the merged base model plus heads/<task>.safetensors and merged.json (tasks, rule and interaction
report: overlaps, sign conflicts, each task's surviving delta mass under every rule); adapters of
language-modelling (SFT) runs merge into one causal LM with no heads. --tune-weights tries every weight per task
of --weight-grid (and for ties/dare each value of --param-grid), merged in memory, and keeps the candidate whose
worst task loses the least dev accuracy against its single adapter (tuning.csv lists them all). docs/merging.md"""


def _floats(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge SpaRTA adapters into one multi-head model (SFT adapters: one causal LM)",
        description="W = W0 + sum_i w_i * scatter(phi_i, delta_i) over adapters trained on the same base model "
        "(or mean, TIES, DARE); each task keeps its head. Reports index overlap, sign conflicts between adapters "
        "and how much of each task's delta survives the rule.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("adapters", metavar="ADAPTER", nargs="+", help="training output dirs or adapter dirs")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the merged model")
    parser.add_argument(
        "--weights",
        type=_floats,
        help="comma-separated weight per adapter (default: all 1; write --weights=-1,1 for a leading minus)",
    )
    parser.add_argument(
        "--strategy",
        default="sum",
        metavar="RULE",
        help=f"how deltas combine: {', '.join(STRATEGIES)} (default: sum, the paper's); mean and ties differ from "
        "sum only where adapters share positions (ties also trims each adapter), dare drops deltas at random",
    )
    parser.add_argument("--top-k", type=float, help="ties: share of each adapter's largest deltas kept (0.2)")
    parser.add_argument("--drop", type=float, help="dare: share of each adapter's deltas dropped (0.5)")
    parser.add_argument(
        "--dare-then", metavar="RULE", help="dare: combine the kept deltas by sum or ties (sum)"
    )
    parser.add_argument("--dare-seed", type=int, help="dare: seed of the random drop (0)")
    parser.add_argument(
        "--tune-weights",
        action="store_true",
        help="choose each task's weight (and the rule's --top-k / --drop) on the tasks' dev sets: the grid's "
        "candidate whose worst task loses the least dev accuracy against its single adapter (training dirs only)",
    )
    parser.add_argument(
        "--weight-grid",
        type=_floats,
        metavar="W,W,...",
        help=f"--tune-weights: weights tried per task (default: {','.join(f'{w:g}' for w in WEIGHT_GRID)})",
    )
    parser.add_argument(
        "--param-grid",
        type=_floats,
        metavar="V,V,...",
        help="--tune-weights: ties top_k values (default 0.1,0.2,0.5) or dare drop values (default 0.3,0.5,0.7)",
    )
    parser.add_argument("--names", help="comma-separated task name per adapter (default: the run's task)")
    parser.add_argument("--model", help="base model (default: the one the adapters record)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier merge in --output")
    parser.add_argument(
        "--refit-heads",
        action="store_true",
        help="after merging, re-train each task's head (only the head) on the merged backbone's features of its "
        "training data, keeping the epoch of best dev loss; the backbone is unchanged",
    )
    parser.add_argument(
        "--refit-samples",
        type=int,
        metavar="N",
        help="training examples per task for --refit-heads (default: as many as its adapter was trained on)",
    )
    parser.add_argument("--refit-lr", type=float, default=1e-3, help="AdamW rate for --refit-heads (1e-3)")
    parser.add_argument("--refit-epochs", type=int, default=50, help="most epochs for --refit-heads (50)")
    parser.add_argument("--eval", action="store_true", help="compare each task's metrics: merged vs single")
    parser.add_argument("--split", default="test", choices=("train", "dev", "test"), help="split for --eval")
    parser.add_argument("--data-dir", help="folder holding <task>/<split>.jsonl.gz")
    parser.add_argument(
        "--max-eval-samples",
        type=int,
        help="evaluate (--eval, and --tune-weights on dev) on a fixed-seed subset",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size (default: 32)")
    parser.add_argument(
        "--device", help="cpu, cuda, ... for --eval and --tune-weights (default: cuda when available)"
    )
    parser.set_defaults(func=run)


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _print_survival(survival: dict) -> None:
    """Each task's surviving delta mass: under the chosen rule, then under each rule for reference."""
    chosen = survival["strategy"]["name"]
    for task, share in survival["tasks"].items():
        others = ", ".join(
            f"{rule} {100 * r['tasks'][task]:.1f}%"
            for rule, r in survival["by_strategy"].items()
            if rule != chosen
        )
        print(f"  {task}: {100 * share:.1f}% of its delta mass survives {chosen} ({others})")


def _print_tuning(tuning: dict) -> None:
    """The evidence table: every candidate's per-task dev accuracy (%) and drop (points), the chosen one marked."""
    tasks = list(tuning["single"])
    param = tuning["parameter"]
    header = [
        "",
        *([param] if param else []),
        *(f"w:{t}" for t in tasks),
        *(f"{t} acc" for t in tasks),
        *(f"{t} drop" for t in tasks),
        "worst",
        "mean",
    ]
    rows = [
        [
            "single",
            *([""] if param else []),
            *("" for _ in tasks),
            *(f"{100 * tuning['single'][t]['accuracy']:.2f}" for t in tasks),
            *("" for _ in tasks),
            "",
            "",
        ]
    ]
    for k, c in enumerate(tuning["candidates"]):
        rows.append(
            [
                "*" if k == tuning["chosen"] else str(k),
                *([f"{c[param]:g}"] if param else []),
                *(f"{c['weights'][t]:g}" for t in tasks),
                *(f"{100 * c['accuracy'][t]:.2f}" for t in tasks),
                *(f"{c['drop'][t]:+.2f}" for t in tasks),
                f"{c['worst_drop']:+.2f}",
                f"{c['mean_drop']:+.2f}",
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(
        f"tuning on dev ({', '.join(f'{t}: {n:,}' for t, n in tuning['dev_examples'].items())} examples; "
        f"{tuning['seconds_per_candidate']:.2f} s per candidate); drop = single - merged accuracy, points"
    )
    for r in [header, *rows]:
        print("  " + "  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def _print_report(doc: dict, output: str) -> None:
    """What was merged, by which rule, how the adapters interact and what survives."""
    n = len(doc["tasks"])
    rule = " ".join(f"{k}={v}" for k, v in doc["strategy"].items() if k != "name")
    print(
        f"merged {n} adapter{'s' * (n != 1)} into {output} (base {doc['base_model']}; "
        f"strategy {doc['strategy']['name']}{' ' + rule if rule else ''})"
    )
    for t in doc["tasks"]:
        labels = f"{t['num_labels']} labels" if "num_labels" in t else f"LM head {t['lm_head']}"
        print(
            f"  {t['name']}: weight {t['weight']:g}, {t['deltas']:,} deltas, seed {t['adapter_seed']}, "
            f"{labels}, from {t['source']}"
        )
    for p in doc["interactions"]:
        print(
            f"  {p['a']} x {p['b']}: overlap {p['overlap']:,} positions ({100 * p['overlap_share_a']:.2f}% of "
            f"{p['a']}, {100 * p['overlap_share_b']:.2f}% of {p['b']}; {p['expected_overlap_if_independent']:,.0f} "
            f"expected if independent), sign conflicts {p['sign_conflicts']:,} "
            f"({100 * p['sign_conflict_share']:.1f}% of the overlap)"
        )
    _print_survival(doc["survival"])
    for w in doc["warnings"]:
        print(f"warning: {w}")


def run(args: argparse.Namespace) -> int:
    if args.refit_samples is not None and args.refit_samples < 1:
        raise SpartaError(f"--refit-samples must be a positive number, got {args.refit_samples}")
    if args.refit_epochs < 1 or args.refit_lr <= 0:
        raise SpartaError("--refit-epochs must be at least 1 and --refit-lr positive")
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        raise SpartaError(f"--max-eval-samples must be a positive number, got {args.max_eval_samples}")
    strategy = strategy_from_options(args.strategy, args.top_k, args.drop, args.dare_then, args.dare_seed)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    common = {"names": names, "model": args.model, "overwrite": args.overwrite, "strategy": strategy}
    if args.tune_weights:
        if args.weights is not None:
            raise SpartaError("--weights and --tune-weights exclude each other: tuning chooses the weights")
        doc = tune_merge(
            args.adapters,
            args.output,
            weight_grid=args.weight_grid or WEIGHT_GRID,
            param_grid=args.param_grid,
            data_dir=args.data_dir,
            max_eval_samples=args.max_eval_samples,
            batch_size=args.batch_size,
            device=args.device,
            **common,
        )
        _print_tuning(doc["tuning"])
    else:
        for flag, value in (("--weight-grid", args.weight_grid), ("--param-grid", args.param_grid)):
            if value is not None:
                raise SpartaError(f"{flag} applies only with --tune-weights")
        doc = merge_adapters(args.adapters, args.output, weights=args.weights, **common)
    _print_report(doc, args.output)
    if args.refit_heads:
        refit_heads(
            args.output,
            data_dir=args.data_dir,
            max_train_samples=args.refit_samples,
            lr=args.refit_lr,
            epochs=args.refit_epochs,
            batch_size=args.batch_size,
            device=args.device,
        )
        doc = read_merged(args.output)
    if args.eval:
        comparison = compare_with_single(
            args.output, args.split, args.data_dir, args.max_eval_samples, args.batch_size, args.device
        )
        for task, m in comparison.items():
            print(f"  {task} {args.split}: merged {_fmt(m['merged'])}")
            print(f"  {task} {args.split}: single {_fmt(m['single'])}")
        doc["eval"] = {"split": args.split, "max_eval_samples": args.max_eval_samples, "tasks": comparison}
        write_json(Path(args.output) / MERGED_FILE, doc)
    return 0
