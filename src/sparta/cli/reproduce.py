"""`sparta reproduce`: run a paper experiment's grid of training runs (resumable) and build its tables and plots."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  sparta reproduce glue --dry-run                  # the cells, their commands and the CPU-time estimate
  sparta reproduce imdb --scale cpu --seeds 0,1    # run (finished cells are skipped; rerun to resume)
  sparta reproduce density-sweep --only sparta-1e-3,lora --set device=cuda
  sparta reproduce glue --report-only --results-md docs/RESULTS.md

EXPERIMENT is a recipe name under experiments/ (imdb, glue, merging, targeting, density-sweep) or a YAML path.
Cells go to OUTPUT/<task>/<row>/seed<k>/; OUTPUT gets report.md, cells.csv, summary.csv and PNG plots."""


def _ints(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="run a paper experiment (grid of training runs) and build its tables and plots",
        description="Run every cell (rows = methods, columns = tasks, seeds) of an experiment recipe, skipping "
        "finished cells, then write paper-style tables (Markdown, CSV) and plots.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "experiment", metavar="EXPERIMENT", help="recipe name or YAML path ('list' lists them)"
    )
    parser.add_argument(
        "--scale", default="cpu", choices=("cpu", "paper"), help="recipe scale (default: cpu)"
    )
    parser.add_argument("--output", help="output dir (default: runs/reproduce/<experiment>-<scale>)")
    parser.add_argument("--seeds", type=_ints, help="comma-separated seeds (default: the recipe's)")
    parser.add_argument("--only", type=_names, metavar="ROW[,ROW]", help="run only these rows")
    parser.add_argument("--tasks", type=_names, metavar="TASK[,TASK]", help="run only these tasks")
    parser.add_argument(
        "--model", help="another model for every cell (paper scale: per-model settings apply)"
    )
    parser.add_argument("--data-dir", help="folder holding <task>/<split>.jsonl.gz")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="a `sparta train` setting for every cell, e.g. --set device=cuda (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the cells, commands and time estimate")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild tables and plots from finished cells"
    )
    parser.add_argument(
        "--results-md", metavar="PATH", help="also write this section into PATH (docs/RESULTS.md)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="train cells in this process (faster start; peak memory is then cumulative)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparta.experiments import build_report, list_recipes, load_recipe, run_experiment, update_results_md
    from sparta.experiments.recipes import parse_overrides

    if args.experiment == "list":
        for name in list_recipes():
            recipe = load_recipe(name)
            print(f"{name}\t{recipe.title} (scales: {', '.join(recipe.scales)})")
        return 0
    recipe = load_recipe(args.experiment)
    default_model = recipe.model(args.scale)
    suffix = f"-{args.model}" if args.model and args.model != default_model else ""
    output = args.output or f"runs/reproduce/{recipe.name}-{args.scale}{suffix}"
    overrides = parse_overrides(args.overrides)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    failed = 0
    if not args.report_only:
        summary = run_experiment(
            recipe,
            args.scale,
            output,
            model=args.model,
            seeds=args.seeds,
            only=args.only,
            tasks=args.tasks,
            overrides=overrides,
            dry_run=args.dry_run,
            isolation="process" if args.in_process else "subprocess",
        )
        if args.dry_run:
            return 0
        print(
            f"ran {len(summary.ran)}, skipped {len(summary.skipped)} finished, failed {len(summary.failed)}"
            + (f", merged {len(summary.merged)}" if summary.merged else "")
        )
        for key, why in summary.failed.items():
            print(f"  failed {key}: {why}")
        failed = len(summary.failed)
    text = build_report(recipe, args.scale, output, args.model)
    print(text)
    print(f"wrote {output}/report.md, cells.csv, summary.csv and plots")
    if args.results_md:
        path = update_results_md(text, f"{recipe.name}:{args.scale}{suffix}", args.results_md)
        print(f"updated {path}")
    return 1 if failed else 0
