"""Default learning rates: one table keyed by objective and method (SpaRTA's also by density), gathered from the
objectives, each of which declares its own beside it (`Objective.rates`), and the one function that fills in
`TrainConfig.lr = None` when a run starts.

Where each figure comes from. *Measured* rates are from docs/RESULTS.md: SmolLM2-135M-Instruct (fp32), AdamW,
linear schedule with 10% warmup, batch 16, max grad norm 1, 1 epoch of 1,000-2,000 sampled training examples
(63-125 steps), chosen by dev accuracy, never test:

* SpaRTA, density >= 2%: 3e-3. SST-2, Wv,Wo at 3.47% (the LoRA budget): the best of {3e-4, 1e-3, 3e-3} on dev
  (mean of 3 seeds): 87.7% dev, 88.3 +- 0.6% test; 1e-3 gave 86.8%, 3e-4 5.5 dev points less. On MRPC 1e-2 was
  a little better still (seed 0), so 3e-3 is the safe end. `make demo` (640 examples, 40 steps) at this default
  reached 86.7% dev and 85.7% test (300 examples each; zero-shot 57.0% dev).
* SpaRTA, density < 2%: 1e-3. All-linear 1% trained SST-2 to 88.3% test at 1e-3 (the merging runs), and the
  density sweep at 1e-3 reached 85% dev at 1% in 63 steps. Below 1% no rate tried trained in 63 steps: at 1e-3
  the 0.01-0.3% cells stayed near the head-only level, and 3e-3 (with dropout and weight decay 0.1) was unstable
  at 0.1% (dev loss 0.88 > log 2), so low densities get the stable rate and want more steps, not a larger rate.
  The 2% boundary lies between the measured points (1% and 3-3.5%); it was not itself measured. The paper's
  tuned rates on gemma-2b (IMDB, its Table 12) move the other way (1e-4 at 0.5%, 1.5e-5 at 5%): what a density
  wants depends on the model and the step count, which is why a run can always give its own `--lr`.
* LoRA r=8: 3e-3. SST-2: the best of {3e-4, 1e-3, 3e-3} on dev (87.7% dev, 87.5 +- 1.4% test); on MRPC 1e-2
  diverged. DoRA (not measured) takes LoRA's rate: it trains the same low-rank update, with a magnitude vector.
* Head only: 1e-3. SST-2, seed 0: 67.0% dev against 65.0% at 3e-4 (3e-3 not run).
* Full fine-tuning: 3e-5, the density sweep's Full FT cell (88.0% test, one seed, not tuned), inside the usual
  1e-5 - 5e-5 range for full fine-tuning of classifiers (the paper used 1e-5 on gemma-2b).

*Measured* SFT rates (the language-modelling objective): GSM8K, SmolLM2-135M-Instruct in bf16-mixed, AdamW,
batch 8, 10% warmup, 1 epoch of 200 examples (25 steps), chosen by answer NLL on 200 dev problems from rates half
a decade apart, each with a worse neighbour on both sides: SpaRTA Wv,Wo at 3.47% 1e-2 (1.026 against 1.057 at
3e-3 and 1.062 at 3e-2), LoRA r=8 q,v 1e-2 (1.036; 3e-3 1.037, 3e-2 1.401), full fine-tuning 1e-4 (0.996; 3e-5
1.032, 3e-4 1.020). Below 2% density SpaRTA's SFT default is 3e-3, not measured: one step below, as
classification's low densities were unstable at the higher rate. These are far above the field's SFT
conventions for 7B models (2e-4 LoRA, 2e-5 full), which barely move a 135M model in a few hundred steps. DoRA
takes LoRA's rate.

*Conventional* rates (nothing measured here): DPO 5e-7 full and 5e-6 LoRA/DoRA (the alignment-handbook
Zephyr-7B recipes); GRPO 1e-6 full (TRL's GRPOConfig default) and 1e-5 LoRA/DoRA. SpaRTA takes LoRA's rate
there: on classification and SFT its measured best matched LoRA's.

All measured figures are for a 135M-parameter model: larger models want smaller rates (the paper's gemma-2b and
Mistral-7B runs used 1e-6 - 2e-4).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from sparta.errors import SpartaError
from sparta.methods import get_method
from sparta.objectives import OBJECTIVES as REGISTERED
from sparta.objectives.base import Rate

if TYPE_CHECKING:
    from sparta.train.config import TrainConfig

# {objective: {method: rates}}: each objective declares its own (`Objective.rates`), in `OBJECTIVES` order
TABLE: dict[str, dict[str, tuple[Rate, ...]]] = {name: dict(o.rates) for name, o in REGISTERED.items()}
OBJECTIVES = tuple(TABLE)


def default_lr(method: str, objective: str = "classification", density: float | None = None) -> Rate:
    """The default rate of `method` for `objective` (SpaRTA: at `density`); a SpartaError where there is none."""
    if objective not in TABLE:
        raise SpartaError(f"unknown objective {objective!r}; known: {', '.join(TABLE)}")
    bands = TABLE[objective].get(method)
    if not bands:
        raise SpartaError(
            f"there is no default learning rate for {method} with the {objective} objective; give --lr"
        )
    for rate in bands:  # highest min_density first
        if density is None or density >= rate.min_density:
            return rate
    return bands[-1]


def objective_of(cfg: TrainConfig) -> str:
    """The training objective a run names (`--objective`), else classification; the training loop passes the
    objective of the run's task instead."""
    return cfg.objective or "classification"


def resolve_lr(cfg: TrainConfig, objective: str | None = None) -> tuple[TrainConfig, str | None]:
    """`cfg` with its default rate filled in when `lr` is None, and a log line saying which default was taken
    (`objective`: the run's, by name; default `objective_of(cfg)`)."""
    if cfg.lr is not None:
        return cfg, None
    objective = objective or objective_of(cfg)
    by_density = get_method(cfg.method).uses_density
    rate = default_lr(cfg.method, objective, cfg.density if by_density else None)
    at = f", density {cfg.density:g}" if by_density else ""
    note = f"lr {format_lr(rate.lr)}: the default for {cfg.method} ({objective}{at}; {rate.source}); --lr sets another"
    return dataclasses.replace(cfg, lr=rate.lr), note


def format_lr(lr: float) -> str:
    """1e-3 style: how rates are written in the docs (3e-3, not 0.003)."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def markdown_table() -> str:
    """The table as Markdown (the README's "Default learning rates" section holds exactly this)."""
    lines = ["| objective | method | lr | source |", "|---|---|---|---|"]
    for objective, methods in TABLE.items():
        for method, bands in methods.items():
            for i, rate in enumerate(bands):
                upper = f"< {100 * bands[i - 1].min_density:g}%" if i else ""
                lower = f">= {100 * rate.min_density:g}%" if rate.min_density else ""
                span = ", ".join(p for p in (lower, upper) if p)
                label = f"{method}, density {span}" if len(bands) > 1 else method
                lines.append(f"| {objective} | {label} | {format_lr(rate.lr)} | {rate.source} |")
    return "\n".join(lines)
