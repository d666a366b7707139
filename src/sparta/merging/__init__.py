"""Merging SpaRTA adapters of one base model into a multi-head model (`merge_adapters`) by a rule of `strategies`
(sum, mean, TIES, DARE), with weights chosen on dev when asked (`tune_merge`), how they interact
(`interactions`), and re-fitting the heads on the merged backbone (`refit_heads`); SFT adapters into one causal LM
(`causal`). The merged directory opens with `sparta.runs.open_model`, like every other directory sparta writes."""

from sparta.merging.interactions import interaction_stats, interaction_warnings
from sparta.merging.merge import compare_with_single, merge_adapters
from sparta.merging.refit import fit_head, refit_heads
from sparta.merging.sources import AdapterSource, check_same_base, open_adapter
from sparta.merging.strategies import STRATEGIES, Merged, Strategy, merge_sparse
from sparta.merging.tuning import tune_merge

__all__ = [
    "STRATEGIES",
    "AdapterSource",
    "Merged",
    "Strategy",
    "check_same_base",
    "compare_with_single",
    "fit_head",
    "interaction_stats",
    "interaction_warnings",
    "merge_adapters",
    "merge_sparse",
    "open_adapter",
    "refit_heads",
    "tune_merge",
]
