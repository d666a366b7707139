"""Training: SpaRTA, LoRA, DoRA, head-only and full fine-tuning in one loop (`train`), configured by one
dataclass (`TrainConfig`) whose fields are also the CLI flags and YAML keys."""

from sparta.train.config import METHODS, TrainConfig, load_yaml
from sparta.train.recipes import train

__all__ = ["METHODS", "TrainConfig", "load_yaml", "train"]
