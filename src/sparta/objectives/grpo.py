"""The GRPO objective: reinforcement learning of a causal LM from rewards on its own sampled answers (group
relative policy optimisation, Shao et al. 2024), with the Dr. GRPO variant (Liu et al. 2025).

**Data.** A split is prompts and reference answers (`PromptEncoded`): each example's conversation up to its
last assistant turn, rendered with the generation prompt (`sparta.tasks.chat.prompt_ids`), and that turn's text
as the reference (`reference_text`). A prompt that leaves no room to generate (its tokens plus
`--max-new-tokens` over `--max-length`, or the model's context for dev and test) is dropped and counted; when
no training prompt is left the run stops with one error saying which limit to raise. `units` are prompts.

**Advantages.** Each prompt's G sampled completions (`--num-generations`) get rewards r (`sparta.objectives.
rewards`); the advantage of completion j is (r_j - mean(r)) / (std(r) + 1e-4) (GRPO; std unbiased, as TRL), or
r_j - mean(r) (`--grpo-loss dr-grpo`, which drops the std division that favours groups of nearly equal reward).

**Loss.** Per completion token t, with ratio rho = pi(t) / pi_old(t) (pi_old: the policy that sampled, whose
log-probs are taken once per rollout batch; with `--num-iterations 1` it is the current policy, rho = 1 and
the gradient is the plain policy gradient) and advantage A of its completion:
l_t = -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + beta k3_t, where k3 = exp(ref - pi) - (ref - pi) - 1 is the
per-token KL estimate to the reference (`--kl-coef` beta; 0: no reference pass). GRPO normalises at the token
level: the sum of l_t over every completion token of the rollout batch is divided by their number (DAPO's
token-level mean, so long completions count per token); Dr. GRPO divides by completions x max_new_tokens, a
constant, instead (no length bias either way). The clip fraction is the share of tokens whose clipped branch
is active (rho < 1 - eps with A < 0, or rho > 1 + eps with A > 0).

**The reference** is the method's (`Method.reference`: SpaRTA's and PEFT's disabled adapter, full fine-tuning's
frozen copy), run under no_grad before the policy's forward (SpaRTA's in-place merge rewrites weights a forward
saved: nothing may run between the policy's forward and its backward).

**Evaluation**: greedy generations from the held-out prompts, `accuracy` (exact match with the task's answer
parser) and `completion_length` (mean tokens). The recipe is `sparta.train.grpo` (`recipe = "rollouts"`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparta.errors import SpartaError
from sparta.objectives.base import Heads, Objective, Rate
from sparta.objectives.batching import collate
from sparta.objectives.examples import example_key, gathered
from sparta.objectives.language_modelling import CausalLMOptions, LanguageModelling
from sparta.objectives.lm_head import forward_hidden, token_nll
from sparta.options import option

GRPO_LOSSES = ("grpo", "dr-grpo")


@dataclass
class GRPOOptions(CausalLMOptions):
    """GRPO's options (the `rl` group of `sparta train --help`): the causal-LM ones, the group sampled per
    prompt, the clipped loss and its KL term, the rewards."""

    num_generations: int = option(
        8, group="rl", help="completions sampled per prompt (the group whose rewards give the advantages)"
    )
    num_iterations: int = option(
        1,
        group="rl",
        help="optimizer steps on each rollout batch (>1: PPO-style reuse with the clipped ratio)",
    )
    epsilon: float = option(0.2, group="rl", help="clipping range of the probability ratio")
    kl_coef: float = option(
        0.0,
        group="rl",
        help="weight of the per-token KL to the reference (the disabled adapter); 0: no KL term",
    )
    grpo_loss: str = option(
        "grpo",
        group="rl",
        choices=GRPO_LOSSES,
        help="grpo: advantages scaled by the group std, token-level mean; dr-grpo: no std, a constant divisor",
    )
    rewards: list[str] = option(
        group="rl",
        default_factory=lambda: ["exact"],
        help="comma-separated rewards NAME[=WEIGHT] or MODULE:FUNCTION[=WEIGHT] (built-ins: exact, format, "
        "length; sparta.objectives.rewards)",
    )
    temperature: float = option(
        0.7,
        group="rl",
        help="sampling temperature of the rollouts (0.7: SmolLM2-135M is rarely right at 1.0)",
    )
    top_p: float = option(1.0, group="rl", help="nucleus sampling of the rollouts (1: off)")

    def validate(self) -> None:
        super().validate()
        checks = [
            (self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}"),
            (self.epsilon > 0, f"epsilon must be > 0, got {self.epsilon}"),
            (self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SpartaError(message)


STD_EPS = 1e-4


@dataclass
class PromptEncoded:
    """A split of prompts (token ids) and their reference answers; `dropped`: prompts that left no room to
    generate (see the module docstring); `lengths`: prompt lengths (the batch stream's ordering)."""

    prompts: list[list[int]]
    references: list[str]
    texts: list[str]
    dropped: int = 0
    token_type_ids = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def lengths(self) -> list[int]:
        return [len(p) for p in self.prompts]


def _chat(name: str) -> Any:
    return getattr(importlib.import_module("sparta.tasks.chat"), name)


def encode_prompts(
    examples: Sequence[dict],
    task,
    tokenizer,
    instruct: bool,
    template: str | None = None,
    max_length: int | None = None,
    truncate: bool = False,
    encoder: bool = False,
    *,
    max_new_tokens: int = 256,
) -> PromptEncoded:
    """Prompts and references of `examples`; prompts over `max_length - max_new_tokens` tokens are dropped."""
    if template is not None:
        raise SpartaError(
            "--template formats classification inputs; GRPO prompts are rendered by their chat "
            "format: leave --template unset"
        )
    if encoder:
        raise SpartaError("GRPO needs a decoder (a causal LM) to sample from; this model is an encoder")
    prompt_ids, prompt_text, reference_text = (
        _chat("prompt_ids"),
        _chat("prompt_text"),
        _chat("reference_text"),
    )
    out = PromptEncoded([], [], [])
    room = None if max_length is None else max_length - max_new_tokens
    for example in examples:
        ids = list(prompt_ids(task, example, tokenizer, instruct))
        if room is not None and len(ids) > room:
            out.dropped += 1
            continue
        out.prompts.append(ids)
        out.references.append(reference_text(task, example))
        out.texts.append(prompt_text(task, example, tokenizer, instruct))
    if not truncate and examples and not out.prompts:
        raise SpartaError(
            f"no training prompt leaves room to generate: all {out.dropped} prompts are longer "
            f"than --max-length {max_length} minus --max-new-tokens {max_new_tokens} tokens; raise "
            "--max-length or lower --max-new-tokens"
        )
    return out


# -- advantages and the loss ---------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages: minus the group mean, divided by the group std (+1e-4) if `scale`."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + STD_EPS)


def completion_logps(
    model: nn.Module, prompts: list[list[int]], completions: list[list[int]], pad_id: int, device
) -> torch.Tensor:
    """Log-probs of every completion token, flattened sequence by sequence (sum of completion lengths,),
    float32, with a graph where gradients are enabled; prompt + completion run right-padded in one batch."""
    seqs = [p + c for p, c in zip(prompts, completions, strict=True)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions, strict=True)]
    batch = collate(seqs, pad_id, "right")
    mask = collate(masks, 0, "right")["input_ids"]
    inputs = {k: v.to(device) for k, v in batch.items()}
    hidden = forward_hidden(model, inputs)
    at = mask[:, 1:].to(device=hidden.device, dtype=torch.bool)
    return -token_nll(model, hidden[:, :-1][at], inputs["input_ids"][:, 1:].to(hidden.device)[at])


@dataclass
class TokenLoss:
    """Per-token terms of one micro-batch: the loss to sum, whether the clip was active, the KL estimate."""

    loss: torch.Tensor
    clipped: torch.Tensor
    kl: torch.Tensor | None


def clipped_loss(
    logps: torch.Tensor,
    old: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float,
    reference: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> TokenLoss:
    """The per-token GRPO loss (module docstring) from per-token log-probs and per-token advantages."""
    ratio = torch.exp(logps - old)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    loss = -torch.min(ratio * advantages, clipped_ratio * advantages)
    clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon) & (advantages > 0))
    kl = None
    if reference is not None:
        diff = reference - logps
        kl = torch.exp(diff) - diff - 1
        loss = loss + kl_coef * kl
    return TokenLoss(loss, clipped.detach(), None if kl is None else kl.detach())


# -- evaluation ------------------------------------------------------------------------------------------------------
def evaluate(
    model: nn.Module,
    data: PromptEncoded,
    task,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    device,
    rt: Any = None,
    tokenizer: Any = None,
    max_new_tokens: int = 256,
    records: list | None = None,
):
    """{"accuracy", "completion_length"} of greedy generations from the split's prompts (all processes);
    `records`: each prompt's correct and completion_length, in split order (`sparta.objectives.examples`)."""
    from sparta.objectives.generation import generate_tokens
    from sparta.tasks import exact_match

    if tokenizer is None:
        raise SpartaError("scoring generations needs the tokenizer")
    if rt is not None and rt.sharded:
        raise SpartaError("generation is not supported while FSDP or ZeRO-3 shard the parameters")
    share = range(len(data))
    if rt is not None and rt.distributed:
        share = share[rt.rank :: rt.world]
    tokens = generate_tokens(
        model,
        tokenizer,
        [data.prompts[i] for i in share],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    matched = [bool(exact_match(task, x, data.references[i])) for x, i in zip(texts, share, strict=True)]
    if records is not None:
        mine = [
            {"index": i, "key": example_key(data.prompts[i]), "correct": hit, "completion_length": len(t)}
            for i, hit, t in zip(share, matched, tokens, strict=True)
        ]
        records.extend(gathered(mine, rt))
    hits = float(sum(matched))
    length = float(sum(len(t) for t in tokens))
    if rt is not None and rt.distributed:
        hits, length = rt.sum(hits), rt.sum(length)
    n = len(data) or float("nan")
    return {"accuracy": hits / n, "completion_length": length / n}


class GRPO(Objective):
    """The plug-in for reinforcement learning with verifiable rewards; trained by `sparta.train.grpo`."""

    name = "grpo"
    model_kind = "causal-lm"
    peft_task_type = "CAUSAL_LM"
    head_modules = ()
    work_unit = "prompt"
    recipe = "rollouts"
    options = GRPOOptions
    rates = {  # conventional (nothing measured here), see sparta.train.rates
        "sparta": (Rate(1e-5, "convention: LoRA's GRPO rate (SpaRTA GRPO not measured)"),),
        "lora": (Rate(1e-5, "convention: TRL GRPO LoRA examples"),),
        "dora": (Rate(1e-5, "convention: LoRA's GRPO rate"),),
        "full": (Rate(1e-6, "convention: TRL GRPOConfig's default"),),
    }

    encode = staticmethod(encode_prompts)
    evaluate = staticmethod(evaluate)

    @staticmethod
    def batch_loss(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise SpartaError(
            "the grpo objective learns from rollouts, not from batches of fixed examples: train it "
            "with sparta.train.train (sparta train), which runs sparta.train.grpo"
        )

    @staticmethod
    def metrics(*args: Any, **kwargs: Any) -> dict[str, float]:
        raise SpartaError("the grpo objective's metrics come from its evaluate")

    @staticmethod
    def units(data: PromptEncoded, idx: list[int]) -> int:
        return len(idx)

    @staticmethod
    def describe(data: PromptEncoded) -> str:
        return f"{len(data)} prompts" + (
            f" ({data.dropped} leaving no room to generate dropped)" if data.dropped else ""
        )

    @staticmethod
    def metric_names(task) -> list[str]:
        return ["accuracy", "completion_length"]

    @staticmethod
    def init_head(model, tokenizer, task, instruct, prompt, path, seed) -> dict:  # noqa: ANN001
        return {"kind": "none"}

    def check(self, cfg: Any) -> None:
        from sparta.objectives.rewards import parse_rewards

        if cfg.template is not None:
            raise SpartaError("--template formats classification inputs; leave it unset for GRPO")
        if cfg.num_generations < 2:
            raise SpartaError(
                f"--num-generations must be at least 2 (advantages compare a prompt's completions "
                f"with each other), got {cfg.num_generations}"
            )
        if cfg.temperature <= 0:
            raise SpartaError(f"--temperature must be > 0 for GRPO's sampling, got {cfg.temperature}")
        if cfg.grad_accum != 1:
            raise SpartaError(
                "GRPO takes one optimizer step per --num-iterations pass over a rollout batch; leave "
                "--grad-accum at 1 (raise --batch-size for more prompts per step)"
            )
        parse_rewards(cfg.rewards)  # unknown names and unimportable functions fail before anything loads

    def sparse_heads(self, cfg: Any) -> str | None:
        return LanguageModelling().sparse_heads(cfg)

    def heads(self, model: nn.Module, cfg: Any) -> Heads:
        return LanguageModelling().heads(model, cfg)

    def encode_options(self, cfg: Any) -> dict[str, Any]:
        return {"max_new_tokens": cfg.max_new_tokens}

    def eval_options(self, cfg: Any, task: Any, tokenizer: Any, final: bool) -> dict[str, Any]:
        return {"tokenizer": tokenizer, "max_new_tokens": cfg.max_new_tokens}

    def run_settings(self, cfg: Any, heads: Heads) -> dict[str, Any]:
        return {
            "lm_head": cfg.lm_head,
            "lm_head_untied": heads.untied,
            "rewards": list(cfg.rewards),
            "num_generations": cfg.num_generations,
            "grpo_loss": cfg.grpo_loss,
        }

    def data_report(self, enc: dict[str, PromptEncoded], task: Any, cfg: Any) -> dict[str, Any]:
        from sparta.tasks.data import data_source

        return {
            "prompts_dropped_no_room": {split: data.dropped for split, data in enc.items()},
            "source": data_source(task, cfg.data_dir),
        }
