"""Tasks: the paper's datasets and splits (Table 2), GSM8K, custom CSV/JSONL tasks (classification or SFT),
prompts, chat formats and loss masks (`sparta.tasks.chat`), and metrics."""

from sparta.tasks.chat import encode_example, prompt_ids, reference_text, render_messages
from sparta.tasks.data import filter_by_length, load_splits, resolve_data_dir
from sparta.tasks.metrics import compute_metrics, exact_match
from sparta.tasks.prompts import field_texts, format_input
from sparta.tasks.specs import TaskSpec, build_task, custom_task, get_task, label_words, list_tasks

__all__ = [
    "TaskSpec",
    "build_task",
    "compute_metrics",
    "custom_task",
    "encode_example",
    "exact_match",
    "field_texts",
    "filter_by_length",
    "format_input",
    "get_task",
    "label_words",
    "list_tasks",
    "load_splits",
    "prompt_ids",
    "reference_text",
    "render_messages",
    "resolve_data_dir",
]
