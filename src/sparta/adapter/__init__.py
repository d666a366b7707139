"""The SpaRTA adapter core: knows nothing of tasks, training loops or the CLI."""

from sparta.adapter.config import SpartaConfig
from sparta.adapter.io import iter_dense_deltas, read_adapter_config
from sparta.adapter.model import SpartaModel, get_sparta_model
from sparta.adapter.targets import find_targets

__all__ = [
    "SpartaConfig",
    "SpartaModel",
    "find_targets",
    "get_sparta_model",
    "iter_dense_deltas",
    "read_adapter_config",
]
