"""The run layer: the directories sparta writes (`layout`), opening any of them, or a model name, into one
loaded object (`open_model`; causal LMs in `causal`), using it (`evaluate`, `predict`, `predict_tasks`,
`generate_texts`), the merged multi-head model, and exporting a run as a standalone transformers model. Training,
merging, the experiments and the CLI all use these."""

from sparta.runs.causal import untie_lm_head
from sparta.runs.export import export_run
from sparta.runs.generation import check_messages, generate_texts, read_prompts, trim_history
from sparta.runs.inference import evaluate, examples_from_texts, predict, predict_tasks, prompt_groups
from sparta.runs.loaded import Loaded, TaskHead, open_model, view_of_run
from sparta.runs.multihead import MultiHeadModel, pool_last, read_merged

__all__ = [
    "Loaded",
    "MultiHeadModel",
    "TaskHead",
    "check_messages",
    "evaluate",
    "examples_from_texts",
    "export_run",
    "generate_texts",
    "open_model",
    "pool_last",
    "predict",
    "predict_tasks",
    "prompt_groups",
    "read_merged",
    "read_prompts",
    "trim_history",
    "untie_lm_head",
    "view_of_run",
]
