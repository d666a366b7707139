"""sparta: Sparse Random Parameter Adaptation (SpaRTA) of pretrained transformer language models."""

from sparta.adapter import SpartaConfig, SpartaModel, get_sparta_model
from sparta.errors import SpartaError

__version__ = "0.1.0"
__all__ = ["SpartaConfig", "SpartaError", "SpartaModel", "__version__", "get_sparta_model"]
