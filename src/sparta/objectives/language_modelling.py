"""The language-modelling objective: instruction fine-tuning (SFT) of a causal LM on chat-formatted examples.

Each example is rendered and tokenised by its task's chat format (`sparta.tasks.chat.encode_example`), which
also says which tokens are training targets: every assistant turn (its end-of-turn token included), or every
token but the first with loss_on="all". Token i is predicted from the hidden state at i - 1, so the loss of a
batch is the next-token cross-entropy at the target positions only, summed; the training loop divides by the
number of target tokens of the whole optimizer step (`units`), across gradient accumulation and processes, so a
step's loss is the mean over its target tokens however they fall into micro-batches. The LM head runs only on
the target positions, in chunks (`sparta.objectives.lm_head`).

Evaluation reports the mean NLL per target token (`loss`) and, when asked (`generate=True`: the task's
`generation_metric`, or `--eval-generate`), the exact match of greedy generations from each example's prompt
against its reference answer (`sparta.objectives.generation`, `sparta.tasks.exact_match`).

There is no classification head. The LM head is frozen by default (`--lm-head frozen`), trains fully
(`train`) or is adapted by SpaRTA like any other matrix (`sparse`); where it is tied to the input embeddings it
is untied first, so the embeddings stay frozen and bit for bit what they were (`heads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparta.errors import SpartaError
from sparta.objectives.base import Heads, Objective, Rate
from sparta.objectives.batching import collate, sorted_batches
from sparta.objectives.examples import example_key, gathered
from sparta.objectives.generation import generate
from sparta.objectives.lm_head import (
    chunked_nll,
    forward_hidden,
    output_module_name,
    sequence_nll,
    untie_lm_head,
)
from sparta.options import option
from sparta.tasks.chat import encode_example, prompt_ids, reference_text
from sparta.tasks.metrics import exact_match

LOSS_ON = ("assistant", "all")
LM_HEAD = ("frozen", "train", "sparse")


@dataclass
class CausalLMOptions:
    """The options of every objective that trains a causal LM (language modelling, preference, GRPO): what
    becomes of the LM head, and how evaluation generates."""

    lm_head: str = option(
        "frozen",
        group="method",
        choices=LM_HEAD,
        help="language modelling: the LM head stays frozen, trains fully (untied from the input embeddings "
        "first where tied; sparta, lora, dora, full) or is one more SpaRTA target (sparse; untied first)",
    )
    eval_generate: bool | None = option(
        None,
        group="optim",
        help="language modelling: score greedy generations (exact match) in the zero-shot and final dev/test "
        "metrics (true/false; default: the task's, true for gsm8k); dev evaluations during training: loss only",
    )
    max_new_tokens: int = option(
        256, group="optim", help="language modelling: the most tokens generated per example when scoring"
    )

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise SpartaError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class LanguageModellingOptions(CausalLMOptions):
    """SFT's options: the causal-LM ones and which tokens carry the loss."""

    loss_on: str = option(
        "assistant",
        group="data",
        choices=LOSS_ON,
        help="language modelling: the tokens that carry the loss (every assistant turn, or all tokens)",
    )


@dataclass
class LMEncoded:
    """A tokenised split: token ids and 0/1 loss masks per example (mask[i] = 1: token i is predicted from the
    tokens before it), the generation prompt and the reference answer of each example, and how many training
    examples were dropped (`dropped`: longer than the max length; `untargeted`: no target token at all)."""

    input_ids: list[list[int]]
    loss_mask: list[list[int]]
    prompts: list[list[int]]
    references: list[str]
    dropped: int = 0
    untargeted: int = 0
    targets: list[int] = field(init=False)  # target tokens per example (the first token is never one)
    token_type_ids = None  # (decoders have no segments; read by the shared batching)

    def __post_init__(self) -> None:
        self.targets = [sum(mask[1:]) for mask in self.loss_mask]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode_split(
    examples: Sequence[dict],
    task,
    tokenizer,
    instruct: bool,
    template: str | None = None,
    max_length: int | None = None,
    truncate: bool = False,
    encoder: bool = False,
    loss_on: str = "assistant",
) -> LMEncoded:
    """Render and tokenise examples with their loss masks. Training splits (truncate=False) drop examples longer
    than `max_length` and those without a target token, counting both; dev and test (truncate=True) keep every
    example whole, since cutting one would cut its answer."""
    if template is not None:
        raise SpartaError(
            "--template formats classification inputs; language-modelling tasks are rendered by "
            "their chat format: leave --template unset"
        )
    if encoder:
        raise SpartaError("language modelling needs a decoder (a causal LM); this model is an encoder")
    if loss_on not in LOSS_ON:
        raise SpartaError(f"unknown loss_on {loss_on!r}; choose one of {', '.join(LOSS_ON)}")
    ids, masks = [], []
    for i, example in enumerate(examples):
        seq, mask = encode_example(task, example, tokenizer, instruct, loss_on=loss_on)
        if not seq or len(mask) != len(seq) or set(mask) - {0, 1}:
            raise SpartaError(
                f"example {i} encodes to {len(seq)} tokens with a loss mask of {len(mask)} 0/1 "
                "values; check its fields"
            )
        ids.append(list(seq))
        masks.append(list(mask))
    keep = list(range(len(ids)))
    dropped = untargeted = 0
    if not truncate:
        if max_length is not None:
            keep = [i for i in keep if len(ids[i]) <= max_length]
            dropped = len(ids) - len(keep)
        targeted = [i for i in keep if any(masks[i][1:])]
        untargeted, keep = len(keep) - len(targeted), targeted
    kept = [examples[i] for i in keep]
    return LMEncoded(
        [ids[i] for i in keep],
        [masks[i] for i in keep],
        [list(prompt_ids(task, ex, tokenizer, instruct)) for ex in kept],
        [reference_text(task, ex) for ex in kept],
        dropped,
        untargeted,
    )


def target_rows(
    model: nn.Module, data: LMEncoded, idx: list[int], pad_id: int, padding_side: str, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden rows, their target token ids, the position in `idx` of each row's example) at the target tokens
    of the examples `idx`."""
    batch = collate([data.input_ids[i] for i in idx], pad_id, padding_side)
    mask = collate([data.loss_mask[i] for i in idx], 0, padding_side)["input_ids"]
    inputs = {k: v.to(device) for k, v in batch.items()}
    hidden = forward_hidden(model, inputs)
    # the hidden state at i - 1 predicts token i: shift the mask and the targets left by one
    at = mask[:, 1:].to(device=hidden.device, dtype=torch.bool)
    segments = torch.arange(len(idx), device=hidden.device)[:, None].expand_as(at)[at]
    return hidden[:, :-1][at], inputs["input_ids"][:, 1:].to(hidden.device)[at], segments


def batch_loss(model: nn.Module, data: LMEncoded, idx: list[int], pad_id: int, padding_side: str, device):
    """Summed next-token NLL over the target tokens of the examples `idx` (0-dim float32, with a graph)."""
    rows, targets, _ = target_rows(model, data, idx, pad_id, padding_side, device)
    return chunked_nll(model, rows, targets)


@torch.no_grad()
def nll_sums(
    model: nn.Module,
    data: LMEncoded,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    device,
    rt: Any = None,
    records: list | None = None,
) -> tuple[float, int]:
    """(summed NLL, target tokens) of a split, in longest-first batches; with a multi-process runtime each rank
    takes every world-th batch and the sums are added up (where parameters are sharded every forward is a
    collective, so all ranks run as many, the extra ones on a stand-in batch, not counted). `records`: also
    each example's summed NLL and target tokens (this process's examples)."""
    every = sorted_batches(data.lengths, batch_size)
    mine, calls = every, len(every)
    if rt is not None and rt.distributed:
        mine = every[rt.rank :: rt.world]
        calls = -(-len(every) // rt.world) if rt.sharded else len(mine)
    total, tokens = 0.0, 0
    for k, idx in enumerate(mine + every[:1] * (calls - len(mine))):
        rows, targets, segments = target_rows(model, data, idx, pad_id, padding_side, device)
        loss = chunked_nll(model, rows, targets)  # the split's sum as training computes it
        if k < len(mine):
            total, tokens = total + loss.item(), tokens + LanguageModelling.units(data, idx)
            if records is not None:
                each = sequence_nll(model, rows, targets, segments, len(idx)).tolist()
                records.extend(
                    {"index": i, "key": example_key(data.input_ids[i]), "nll": nll, "tokens": data.targets[i]}
                    for i, nll in zip(idx, each, strict=True)
                )
    if rt is not None and rt.distributed:
        total, tokens = rt.sum(total), int(round(rt.sum(float(tokens))))
    return total, tokens


def generation_matches(
    model: nn.Module,
    data: LMEncoded,
    task,
    tokenizer,
    batch_size: int,
    max_new_tokens: int,
    rt: Any = None,
    records: list | None = None,
) -> int:
    """How many greedy generations from the examples' prompts match their references (all processes);
    `records`: also whether each of this process's examples matched."""
    if tokenizer is None:
        raise SpartaError("scoring generations needs the tokenizer")
    if rt is not None and rt.sharded:
        raise SpartaError(
            "generation is not supported while FSDP or ZeRO-3 shard the parameters; train with "
            "--eval-generate false and score the saved run with sparta eval"
        )
    share = range(len(data))
    if rt is not None and rt.distributed:
        share = share[rt.rank :: rt.world]
    texts = generate(
        model,
        tokenizer,
        [data.prompts[i] for i in share],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    matched = [
        bool(exact_match(task, text, data.references[i])) for text, i in zip(texts, share, strict=True)
    ]
    if records is not None:
        records.extend({"index": i, "exact_match": hit} for i, hit in zip(share, matched, strict=True))
    hits = sum(matched)
    return int(round(rt.sum(float(hits)))) if rt is not None and rt.distributed else hits


def metrics(task, nll: float, tokens: int, matches: int | None = None, examples: int = 0) -> dict[str, float]:
    """The mean NLL per target token (`loss`) and, given generation matches, their rate (`exact_match`)."""
    out = {"loss": nll / tokens if tokens else float("nan")}
    if matches is not None:
        out["exact_match"] = matches / examples if examples else float("nan")
    return out


def evaluate(
    model: nn.Module,
    data: LMEncoded,
    task,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    device,
    rt: Any = None,
    generate: bool = False,
    tokenizer: Any = None,
    max_new_tokens: int = 256,
    records: list | None = None,
):
    """{"loss": mean NLL per target token} on one split, and "exact_match" of greedy generations if `generate`;
    `records`: each example's nll, tokens (and exact_match), in split order (`sparta.objectives.examples`)."""
    was_training = model.training
    model.eval()
    scored: list | None = [] if records is not None else None
    matched: list | None = [] if records is not None and generate else None
    try:
        nll, tokens = nll_sums(model, data, batch_size, pad_id, padding_side, device, rt, scored)
        matches = (
            generation_matches(model, data, task, tokenizer, batch_size, max_new_tokens, rt, matched)
            if generate
            else None
        )
    finally:
        model.train(was_training)
    if records is not None:
        rows = gathered(scored, rt)
        if matched is not None:
            for row, hit in zip(rows, gathered(matched, rt), strict=True):
                row["exact_match"] = hit["exact_match"]
        records.extend(rows)
    return metrics(task, nll, tokens, matches, len(data))


class LanguageModelling(Objective):
    """The plug-in for causal-LM fine-tuning on chat-formatted (or plain-text) examples."""

    name = "language-modelling"
    model_kind = "causal-lm"  # what `sparta.models.load_model` builds: AutoModelForCausalLM
    peft_task_type = "CAUSAL_LM"
    head_modules = ()  # no classification head; the LM head is the `lm_head` setting's (see `heads`)
    work_unit = "tok"
    options = LanguageModellingOptions
    rates = {  # measured on GSM8K with SmolLM2-135M-Instruct, see sparta.train.rates
        "sparta": (
            Rate(
                1e-2,
                "measured, docs/RESULTS.md GSM8K probes: best of 1e-3..3e-2 on dev NLL, Wv,Wo 3.47%",
                min_density=0.02,
            ),
            Rate(
                3e-3, "not measured: a step below the 3.47% rate, as low densities needed for classification"
            ),
        ),
        "lora": (
            Rate(1e-2, "measured, docs/RESULTS.md GSM8K probes: best of 3e-4..3e-2 on dev NLL, r=8 q,v"),
        ),
        "dora": (Rate(1e-2, "LoRA's measured SFT rate (DoRA not measured)"),),
        "full": (Rate(1e-4, "measured, docs/RESULTS.md GSM8K probes: best of 1e-5..3e-4 on dev NLL"),),
    }

    encode = staticmethod(encode_split)
    batch_loss = staticmethod(batch_loss)
    evaluate = staticmethod(evaluate)
    metrics = staticmethod(metrics)

    @staticmethod
    def units(data: LMEncoded, idx: list[int]) -> int:
        """What a step's loss is averaged over: target tokens."""
        return sum(data.targets[i] for i in idx)

    @staticmethod
    def work(data: LMEncoded, idx: list[int]) -> int:
        return sum(len(data.input_ids[i]) for i in idx)

    @staticmethod
    def describe(data: LMEncoded) -> str:
        dropped = f", {data.untargeted} without a target token dropped" if data.untargeted else ""
        return f"{len(data)} examples, {sum(data.targets):,} target tokens{dropped}"

    @staticmethod
    def metric_names(task) -> list[str]:
        """The task's metrics besides the loss (logged in its own column)."""
        return [m for m in task.metrics if m != "loss"]

    @staticmethod
    def init_head(model, tokenizer, task, instruct, prompt, path, seed) -> dict:  # noqa: ANN001
        return {"kind": "none"}

    def check(self, cfg: Any) -> None:
        if cfg.template is not None:
            raise SpartaError(
                "--template formats classification inputs; leave it unset for language modelling"
            )

    def sparse_heads(self, cfg: Any) -> str | None:
        return "--lm-head sparse" if getattr(cfg, "lm_head", "frozen") == "sparse" else None

    def heads(self, model: nn.Module, cfg: Any) -> Heads:
        """lm_head "frozen": none; "train": the LM head trains fully; "sparse": it is one more SpaRTA target.
        Either of the last two unties a head tied to the input embeddings first."""
        mode = getattr(cfg, "lm_head", "frozen")
        if mode not in LM_HEAD:
            raise SpartaError(f"unknown lm_head {mode!r}; choose one of {', '.join(LM_HEAD)}")
        if mode == "frozen":
            return Heads()
        name = output_module_name(model)
        untied = untie_lm_head(model)
        return Heads(full=[name], untied=untied) if mode == "train" else Heads(sparse=[name], untied=untied)

    def encode_options(self, cfg: Any) -> dict[str, Any]:
        return {"loss_on": cfg.loss_on}

    def saved_encode_options(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"loss_on": info.get("loss_on", "assistant")}

    def eval_options(self, cfg: Any, task: Any, tokenizer: Any, final: bool) -> dict[str, Any]:
        """Generations are scored in the zero-shot and final metrics only (dev during training: the loss)."""
        wanted = (
            cfg.eval_generate if cfg.eval_generate is not None else getattr(task, "generation_metric", False)
        )
        if not (final and wanted):
            return {}
        return {"generate": True, "tokenizer": tokenizer, "max_new_tokens": cfg.max_new_tokens}

    def run_settings(self, cfg: Any, heads: Heads) -> dict[str, Any]:
        return {"loss_on": cfg.loss_on, "lm_head": cfg.lm_head, "lm_head_untied": heads.untied}
