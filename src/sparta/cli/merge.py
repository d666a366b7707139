"""`sparta merge`: add SpaRTA adapters of one base model into a multi-head model (paper section 8), or SFT adapters
into one causal LM; `sparta eval`, `sparta predict` and `sparta generate` open its output like any other
directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparta.errors import SpartaError
from sparta.fileio import write_json
from sparta.merging import compare_with_single, merge_adapters, refit_heads
from sparta.runs import read_merged
from sparta.runs.layout import MERGED_FILE

EPILOG = """examples:
  sparta merge runs/sst2 runs/cola --output merged/sst2-cola
  sparta merge runs/sst2 runs/cola --output merged/sst2-cola --eval --max-eval-samples 500
  sparta merge runs/sst2 runs/cola --output merged/sst2-cola --refit-heads --eval
  sparta predict merged/sst2-cola "the movie was a delight"
  sparta eval merged/sst2-cola --task cola
  sparta merge runs/gsm8k runs/chat --weights 0.5,0.5 --output merged/sft && sparta generate merged/sft "Hi"

ADAPTER is a `sparta train` output dir (run.json + adapter/) or a bare adapter dir. The output dir is a Hugging Face
checkpoint of the merged base model plus heads/<task>.safetensors and merged.json (tasks and interaction report);
adapters of language-modelling (SFT) runs merge into one causal LM with no heads."""


def _floats(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge SpaRTA adapters into one multi-head model (SFT adapters: one causal LM)",
        description="W = W0 + sum_i w_i * scatter(phi_i, delta_i) over adapters trained on the same base model; "
        "each task keeps its head. Reports index overlap and sign conflicts between adapters.",
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
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on a fixed-seed subset of this size")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size (default: 32)")
    parser.add_argument("--device", help="cpu, cuda, ... for --eval (default: cuda when available)")
    parser.set_defaults(func=run)


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def run(args: argparse.Namespace) -> int:
    if args.refit_samples is not None and args.refit_samples < 1:
        raise SpartaError(f"--refit-samples must be a positive number, got {args.refit_samples}")
    if args.refit_epochs < 1 or args.refit_lr <= 0:
        raise SpartaError("--refit-epochs must be at least 1 and --refit-lr positive")

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    doc = merge_adapters(
        args.adapters,
        args.output,
        weights=args.weights,
        names=names,
        model=args.model,
        overwrite=args.overwrite,
    )
    n = len(doc["tasks"])
    print(f"merged {n} adapter{'s' * (n != 1)} into {args.output} (base {doc['base_model']})")
    for t in doc["tasks"]:
        labels = f"{t['num_labels']} labels" if "num_labels" in t else f"LM head {t['lm_head']}"
        print(f"  {t['name']}: weight {t['weight']:g}, {t['deltas']:,} deltas, seed {t['adapter_seed']}, "
              f"{labels}, from {t['source']}")  # fmt: skip
    for p in doc["interactions"]:
        print(
            f"  {p['a']} x {p['b']}: overlap {p['overlap']:,} positions ({100 * p['overlap_share_a']:.2f}% of "
            f"{p['a']}, {100 * p['overlap_share_b']:.2f}% of {p['b']}; {p['expected_overlap_if_independent']:,.0f} "
            f"expected if independent), sign conflicts {p['sign_conflicts']:,} "
            f"({100 * p['sign_conflict_share']:.1f}% of the overlap)"
        )
    for w in doc["warnings"]:
        print(f"warning: {w}")
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
