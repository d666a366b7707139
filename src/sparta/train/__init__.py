"""Classification fine-tuning: SpaRTA, LoRA, DoRA, head-only and full fine-tuning in one training loop."""

from sparta.train.config import METHODS, TrainConfig, load_yaml
from sparta.train.inference import LoadedRun, evaluate_run, load_run, predict
from sparta.train.loop import evaluate, train

__all__ = [
    "METHODS",
    "LoadedRun",
    "TrainConfig",
    "evaluate",
    "evaluate_run",
    "load_run",
    "load_yaml",
    "predict",
    "train",
]
