"""Tasks: the paper's datasets and splits (Table 2), custom CSV/JSONL tasks, prompts and metrics."""

from sparta.tasks.data import filter_by_length, load_splits, resolve_data_dir
from sparta.tasks.metrics import compute_metrics
from sparta.tasks.prompts import field_texts, format_input
from sparta.tasks.specs import TaskSpec, build_task, custom_task, get_task, label_words, list_tasks

__all__ = [
    "TaskSpec",
    "build_task",
    "compute_metrics",
    "custom_task",
    "field_texts",
    "filter_by_length",
    "format_input",
    "get_task",
    "label_words",
    "list_tasks",
    "load_splits",
    "resolve_data_dir",
]
