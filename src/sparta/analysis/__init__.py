"""Analyses of the paper: memory accounting (section 5, Table 1) and delta ranks (Appendix A, Tables 7-8)."""

from sparta.analysis.memory import (
    IMPL,
    PAPER,
    Accounting,
    ModelSize,
    account,
    measure_training_state,
    paper_table,
    paper_training_bytes,
    size_model,
    sparta_training_bytes,
)
from sparta.analysis.rank import (
    RankRecord,
    RankReport,
    delta_ranks,
    full_model_ranks,
    lora_ranks,
    sparta_ranks,
)

__all__ = [
    "IMPL",
    "PAPER",
    "Accounting",
    "ModelSize",
    "RankRecord",
    "RankReport",
    "account",
    "delta_ranks",
    "full_model_ranks",
    "lora_ranks",
    "measure_training_state",
    "paper_table",
    "paper_training_bytes",
    "size_model",
    "sparta_ranks",
    "sparta_training_bytes",
]
