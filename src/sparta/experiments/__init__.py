"""Reproducing the paper's experiments: recipe grids of training runs, tables, plots and density tuning."""

from sparta.experiments.recipes import Cell, Recipe, expand, list_recipes, load_recipe
from sparta.experiments.report import build_report, update_results_md
from sparta.experiments.runner import RunSummary, run_experiment
from sparta.experiments.tune import tune_density

__all__ = [
    "Cell",
    "Recipe",
    "RunSummary",
    "build_report",
    "expand",
    "list_recipes",
    "load_recipe",
    "run_experiment",
    "tune_density",
    "update_results_md",
]
