"""The preference objective: direct preference optimisation (DPO, Rafailov et al. 2023) of a causal LM on pairs
of a prompt, a chosen and a rejected reply, in the one training loop.

**Data.** A row is a ``prompt`` (text, or chat messages) with ``chosen`` and ``rejected`` replies, or hh-rlhf's
two whole dialogues (`sparta.tasks.preference.pair_of`). Each pair becomes two sequences, prompt + reply + end
of turn, rendered by the task's chat format (`sparta.tasks.chat`: the model's chat template for instruct
models, the plain template for base models); the loss mask covers the last assistant turn only, found by
position (`assistant_spans`). Pairs longer than the max length (either sequence) are dropped and counted in
every split, and so are pairs with a missing field, an empty reply or identical replies (`invalid`, by
reason); results.json reports both ("data"). `units` are pairs: a step's loss is the mean over its pairs.

**Log-probs.** log pi(y|x) is the sum over the reply's tokens, the LM head applied at reply positions only
(`sparta.objectives.lm_head.sequence_nll`). Chosen and rejected run as one batch.

**Loss.** With h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) and beta (`--beta`, 0.1):
``sigmoid``: -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h), e = `--label-smoothing` (0: DPO; > 0 the
conservative DPO of Mitchell 2023, as TRL); ``ipo`` (Azar et al. 2023): (h - 1/(2 beta))^2 where, as its authors
and TRL define it, the log-probs are length-normalised (the mean per-token log-prob of each reply).

**The reference.** `prepare` (called by the loop once the method is applied) attaches it to the encoded splits:
either the reference log-probs of every pair, computed once before training (`--precompute-reference`, stored
with the run), or the method's reference model (`Method.reference`: SpaRTA's and PEFT's disabled adapter, full
fine-tuning's frozen copy), run on the fly under no_grad *before* the policy's forward (SpaRTA's in-place merge
rewrites the weights a forward saved: nothing may run between the policy's forward and its backward) and on the
unwrapped model (never through DDP). Before `prepare` (the zero-shot metrics) the model is its own reference.

**Metrics.** `loss`; `preference_accuracy` (share of pairs whose chosen reply gets the higher implicit reward
beta (log pi - log ref)), `reward_margin` (mean reward difference), `chosen_logps` / `rejected_logps` (mean
summed log-probs), `kl_estimate` (mean per-token log pi - log ref over the chosen replies: an estimate of the
policy's divergence on the data's replies, not on its own samples); with no reference yet (zero-shot)
`logprob_preference` instead of the reward metrics (share of pairs whose chosen reply has the higher log-prob);
in the zero-shot and final metrics also `generation_length`, the mean number of tokens of greedy generations
from the first `GENERATION_PROMPTS` prompts of the split (`--max-new-tokens`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparta.errors import SpartaError
from sparta.objectives.base import Objective, Rate
from sparta.objectives.batching import collate, sorted_batches
from sparta.objectives.examples import example_key, gathered
from sparta.objectives.language_modelling import CausalLMOptions, LanguageModelling
from sparta.objectives.lm_head import forward_hidden, sequence_nll
from sparta.options import option

logger = logging.getLogger(__name__)
DPO_LOSSES = ("sigmoid", "ipo")
GENERATION_PROMPTS = 20
REFERENCE_FILE = "reference_logps.safetensors"  # in the run dir (`--precompute-reference`)


@dataclass
class PreferenceOptions(CausalLMOptions):
    """DPO's options: the causal-LM ones, the loss and its beta, and where the reference log-probs come from."""

    beta: float = option(
        0.1, group="optim", help="preference (DPO): how far the policy may move from the reference (beta)"
    )
    dpo_loss: str = option(
        "sigmoid",
        group="optim",
        choices=DPO_LOSSES,
        help="preference: sigmoid (DPO; with --label-smoothing: conservative DPO) or ipo (on length-normalised "
        "log-probs)",
    )
    label_smoothing: float = option(
        0.0,
        group="optim",
        help="preference, sigmoid loss: the assumed share of flipped labels (cDPO), in [0, 0.5)",
    )
    precompute_reference: bool = option(
        False,
        group="optim",
        const=True,
        help="preference: compute the reference log-probs of every pair once before training and store them with "
        "the run (OUTPUT/reference_logps.safetensors; reused on resume)",
    )

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise SpartaError(f"beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise SpartaError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@dataclass(frozen=True)
class DPOSettings:
    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0


@dataclass
class PairEncoded:
    """A tokenised split of preference pairs: per pair the chosen and the rejected sequence with their 0/1 loss
    masks (1: a reply token, predicted from the tokens before it), the prompt (for generation); what was dropped
    (`dropped`: longer than the max length; `invalid`: {reason: pairs}); the loss settings; and, once `prepare`
    ran, the reference: `reference_logps` (N, 2) precomputed, or `reference` (the model and its method)."""

    chosen_ids: list[list[int]]
    chosen_mask: list[list[int]]
    rejected_ids: list[list[int]]
    rejected_mask: list[list[int]]
    prompts: list[list[int]]
    dropped: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    settings: DPOSettings = DPOSettings()
    reference_logps: torch.Tensor | None = None
    reference: tuple[nn.Module, Any] | None = None
    token_type_ids = None  # (read by the shared batching)

    def __len__(self) -> int:
        return len(self.chosen_ids)

    @property
    def lengths(self) -> list[int]:
        return [max(len(c), len(r)) for c, r in zip(self.chosen_ids, self.rejected_ids, strict=True)]

    def report(self) -> dict[str, Any]:
        return {"pairs": len(self), "dropped_too_long": self.dropped, "dropped_invalid": dict(self.invalid)}


def _reply_encoding(
    messages: list[dict], reply: str, tokenizer, instruct: bool
) -> tuple[list[int], list[int]]:
    from sparta.tasks.chat import assistant_spans

    ids, spans = assistant_spans([*messages, {"role": "assistant", "content": reply}], tokenizer, instruct)
    start, end = spans[-1]  # the reply: the last assistant turn (earlier ones belong to the prompt)
    mask = [0] * len(ids)
    mask[start:end] = [1] * (end - start)
    return ids, mask


def encode_pairs(
    examples: Sequence[dict],
    task,
    tokenizer,
    instruct: bool,
    template: str | None = None,
    max_length: int | None = None,
    truncate: bool = False,
    encoder: bool = False,
    *,
    pair_max_length: int | None = None,
    beta: float = 0.1,
    dpo_loss: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PairEncoded:
    """Encode preference rows (module docstring). Pairs over the max length are dropped in every split: train's
    limit is `max_length`; dev and test (`truncate`) keep to the model's context (`max_length` there) and to
    `pair_max_length` (the run's --max-length, else the task's)."""
    from sparta.tasks.chat import encode_text, render_messages
    from sparta.tasks.preference import pair_columns, pair_of

    if template is not None:
        raise SpartaError(
            "--template formats classification inputs; preference pairs are rendered by their chat "
            "format: leave --template unset"
        )
    if encoder:
        raise SpartaError("preference optimisation needs a decoder (a causal LM); this model is an encoder")
    limit = max_length
    if truncate:
        cap = pair_max_length or getattr(task, "max_length", None)
        limit = min(x for x in (max_length, cap) if x) if (max_length or cap) else None
    system = getattr(task, "system_prompt", None)
    out = PairEncoded([], [], [], [], [], settings=DPOSettings(beta, dpo_loss, label_smoothing))
    columns = pair_columns(task)
    for row in examples:
        pair, why = pair_of(row, columns)
        if pair is None:
            out.invalid[why] = out.invalid.get(why, 0) + 1
            continue
        messages = pair.messages
        if system is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        c_ids, c_mask = _reply_encoding(messages, pair.chosen, tokenizer, instruct)
        r_ids, r_mask = _reply_encoding(messages, pair.rejected, tokenizer, instruct)
        if limit is not None and max(len(c_ids), len(r_ids)) > limit:
            out.dropped += 1
            continue
        out.chosen_ids.append(c_ids)
        out.chosen_mask.append(c_mask)
        out.rejected_ids.append(r_ids)
        out.rejected_mask.append(r_mask)
        out.prompts.append(encode_text(tokenizer, render_messages(messages, tokenizer, instruct, True)))
    return out


# -- log-probs and the loss ----------------------------------------------------------------------------------------
def sequence_logps(
    model: nn.Module, data: PairEncoded, idx: list[int], pad_id: int, padding_side: str, device
):
    """(log-probs (B, 2), reply tokens (B, 2)) of the chosen (column 0) and rejected (1) replies of pairs `idx`:
    both in one batch, summed over the reply tokens (with a graph where gradients are enabled)."""
    seqs = [data.chosen_ids[i] for i in idx] + [data.rejected_ids[i] for i in idx]
    masks = [data.chosen_mask[i] for i in idx] + [data.rejected_mask[i] for i in idx]
    batch = collate(seqs, pad_id, padding_side)
    mask = collate(masks, 0, padding_side)["input_ids"]
    inputs = {k: v.to(device) for k, v in batch.items()}
    hidden = forward_hidden(model, inputs)
    at = mask[:, 1:].to(device=hidden.device, dtype=torch.bool)
    segments = torch.arange(len(seqs), device=hidden.device).unsqueeze(1).expand_as(at)[at]
    nll = sequence_nll(
        model, hidden[:, :-1][at], inputs["input_ids"][:, 1:].to(hidden.device)[at], segments, len(seqs)
    )
    b = len(idx)
    return -torch.stack([nll[:b], nll[b:]], dim=1), at.sum(1).reshape(2, b).T.float()


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def reference_logps(
    data: PairEncoded, idx: list[int], pad_id: int, padding_side: str, device
) -> torch.Tensor | None:
    """The reference log-probs (B, 2) of pairs `idx`: precomputed, or the method's reference model run now (in
    eval mode, no_grad); None before `prepare` (the model is its own reference)."""
    if data.reference_logps is not None:
        return data.reference_logps[idx].to(device)
    if data.reference is None:
        return None
    net, method = data.reference
    with method.reference(net) as ref, _evaluating(ref):
        return sequence_logps(ref, data, idx, pad_id, padding_side, device)[0]


def dpo_losses(policy: torch.Tensor, reference: torch.Tensor, tokens: torch.Tensor, settings: DPOSettings):
    """(per-pair loss (B,), chosen rewards (B,), rejected rewards (B,)) from (B, 2) log-probs and reply token
    counts; rewards are beta (log pi - log ref) of the summed log-probs (module docstring for the losses)."""
    ratios = policy - reference.to(policy.dtype)
    beta = settings.beta
    if settings.loss == "ipo":
        normalised = ratios / tokens.to(ratios.dtype)
        h = normalised[:, 0] - normalised[:, 1]
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        h = ratios[:, 0] - ratios[:, 1]
        e = settings.label_smoothing
        losses = -(1 - e) * F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)
    rewards = beta * ratios.detach()
    return losses, rewards[:, 0], rewards[:, 1]


def batch_loss(model: nn.Module, data: PairEncoded, idx: list[int], pad_id: int, padding_side: str, device):
    """Summed DPO loss of pairs `idx` (0-dim float32, with a graph): the reference first (no_grad), then the
    policy's forward, which its backward follows with nothing in between."""
    ref = reference_logps(data, idx, pad_id, padding_side, device)
    policy, tokens = sequence_logps(model, data, idx, pad_id, padding_side, device)
    losses, _, _ = dpo_losses(policy, policy.detach() if ref is None else ref, tokens, data.settings)
    return losses.sum()


# -- evaluation ------------------------------------------------------------------------------------------------------
SUMS = ("loss", "correct", "margin", "chosen", "rejected", "prefer", "kl", "kl_tokens")


@torch.no_grad()
def _sums(
    model: nn.Module,
    data: PairEncoded,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    device,
    rt: Any,
    records: list | None = None,
):
    every = sorted_batches(data.lengths, batch_size)
    mine, calls = every, len(every)
    if rt is not None and rt.distributed:
        mine = every[rt.rank :: rt.world]
        calls = -(-len(every) // rt.world) if rt.sharded else len(mine)
    totals = dict.fromkeys(SUMS, 0.0)
    with_reference = data.reference is not None or data.reference_logps is not None
    for k, idx in enumerate(mine + every[:1] * (calls - len(mine))):
        ref = reference_logps(data, idx, pad_id, padding_side, device)
        policy, tokens = sequence_logps(model, data, idx, pad_id, padding_side, device)
        ref = policy if ref is None else ref
        losses, chosen, rejected = dpo_losses(policy, ref, tokens, data.settings)
        if k >= len(mine):
            continue
        margin = chosen - rejected
        step = {
            "loss": losses.sum(),
            "correct": (chosen > rejected).sum(),
            "margin": margin.sum(),
            "chosen": policy[:, 0].sum(),
            "rejected": policy[:, 1].sum(),
            "prefer": (policy[:, 0] > policy[:, 1]).sum(),
            "kl": (policy[:, 0] - ref[:, 0]).sum(),
            "kl_tokens": tokens[:, 0].sum(),
        }
        for key, value in step.items():
            totals[key] += float(value)
        if records is not None:
            for row, i in enumerate(idx):
                record = {
                    "index": i,
                    "key": example_key(data.chosen_ids[i], data.rejected_ids[i]),
                    "prefer": bool(policy[row, 0] > policy[row, 1]),
                    "chosen_logps": float(policy[row, 0]),
                    "rejected_logps": float(policy[row, 1]),
                }
                if with_reference:  # the implicit rewards' verdict and margin
                    record |= {"correct": bool(chosen[row] > rejected[row]), "margin": float(margin[row])}
                records.append(record)
    if rt is not None and rt.distributed:
        totals = {k: rt.sum(v) for k, v in totals.items()}
    return totals


def generation_length(
    model: nn.Module, data: PairEncoded, tokenizer, batch_size: int, max_new_tokens: int
) -> float:
    """Mean tokens of greedy generations from the split's first `GENERATION_PROMPTS` prompts."""
    from sparta.objectives.generation import generate

    prompts = data.prompts[:GENERATION_PROMPTS]
    texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / max(1, len(texts))


def metrics(sums: dict[str, float], pairs: int, with_reference: bool) -> dict[str, float]:
    """The metrics of a split from its `_sums` (module docstring)."""
    n = pairs or float("nan")
    out = {
        "loss": sums["loss"] / n,
        "chosen_logps": sums["chosen"] / n,
        "rejected_logps": sums["rejected"] / n,
    }
    if with_reference:
        out |= {
            "preference_accuracy": sums["correct"] / n,
            "reward_margin": sums["margin"] / n,
            "kl_estimate": sums["kl"] / (sums["kl_tokens"] or float("nan")),
        }
    else:
        out["logprob_preference"] = sums["prefer"] / n
    return out


def evaluate(
    model: nn.Module,
    data: PairEncoded,
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
    """The metrics of one split (module docstring); `generate`: also the mean greedy generation length;
    `records`: each pair's log-probs and `prefer`, and with a reference its `correct` and `margin`, in split
    order (`sparta.objectives.examples`)."""
    with_reference = data.reference is not None or data.reference_logps is not None
    mine: list | None = [] if records is not None else None
    with _evaluating(model):
        out = metrics(
            _sums(model, data, batch_size, pad_id, padding_side, device, rt, mine), len(data), with_reference
        )
        if records is not None:
            records.extend(gathered(mine, rt))
        if generate and len(data):
            if rt is not None and rt.sharded:
                raise SpartaError("generation is not supported while FSDP or ZeRO-3 shard the parameters")
            out["generation_length"] = generation_length(model, data, tokenizer, batch_size, max_new_tokens)
    return out


# -- the reference, attached once the method is applied ---------------------------------------------------------------
def precompute(
    net: nn.Module,
    method: Any,
    enc: dict[str, PairEncoded],
    batch_size: int,
    pad_id: int,
    padding_side: str,
    device,
) -> dict[str, torch.Tensor]:
    """{split: (N, 2) float32 reference log-probs} of every split, longest-first batches (before any step)."""
    out = {}
    for split, data in enc.items():
        logps = torch.zeros((len(data), 2), dtype=torch.float32)
        saved, data.reference, data.reference_logps = data.reference, (net, method), None
        for idx in sorted_batches(data.lengths, batch_size):
            logps[idx] = reference_logps(data, idx, pad_id, padding_side, device).float().cpu()
        data.reference = saved
        out[split] = logps
    return out


def load_or_precompute(path: Path, net, method, enc, batch_size, pad_id, padding_side, device, rt) -> dict:  # noqa: ANN001
    """The run's reference log-probs: read from `path` (a resumed run), else computed and written (rank 0)."""
    from safetensors.torch import load_file, save_file

    if path.is_file():
        stored = load_file(str(path))
        if {k: tuple(v.shape) for k, v in stored.items()} == {k: (len(d), 2) for k, d in enc.items()}:
            logger.info(f"reference log-probs read from {path}")
            return stored
        logger.warning(f"{path} does not match this run's pairs; computing the reference log-probs again")
    logps = precompute(net, method, enc, batch_size, pad_id, padding_side, device)
    if rt is None or rt.is_main:
        save_file({k: v.contiguous() for k, v in logps.items()}, str(path))
        logger.info(f"reference log-probs of {sum(len(d) for d in enc.values())} pairs written to {path}")
    return logps


class Preference(Objective):
    """The plug-in for DPO on preference pairs."""

    name = "preference"
    model_kind = "causal-lm"
    peft_task_type = "CAUSAL_LM"
    head_modules = ()
    work_unit = "pair"
    options = PreferenceOptions
    rates = {  # conventional (nothing measured here), see sparta.train.rates
        "sparta": (Rate(5e-6, "convention: LoRA's DPO rate (SpaRTA DPO not measured)"),),
        "lora": (Rate(5e-6, "convention: alignment-handbook Zephyr-7B QLoRA DPO"),),
        "dora": (Rate(5e-6, "convention: LoRA's DPO rate"),),
        "full": (Rate(5e-7, "convention: alignment-handbook Zephyr-7B full DPO"),),
    }
    uses_reference = True

    encode = staticmethod(encode_pairs)
    batch_loss = staticmethod(batch_loss)
    evaluate = staticmethod(evaluate)
    metrics = staticmethod(metrics)

    @staticmethod
    def units(data: PairEncoded, idx: list[int]) -> int:
        return len(idx)

    @staticmethod
    def describe(data: PairEncoded) -> str:
        invalid = sum(data.invalid.values())
        return f"{len(data)} pairs" + (f" ({invalid} invalid dropped: {data.invalid})" if invalid else "")

    @staticmethod
    def metric_names(task) -> list[str]:
        return ["preference_accuracy", "reward_margin", "chosen_logps", "rejected_logps", "kl_estimate"]

    @staticmethod
    def init_head(model, tokenizer, task, instruct, prompt, path, seed) -> dict:  # noqa: ANN001
        return {"kind": "none"}

    def check(self, cfg: Any) -> None:
        if cfg.template is not None:
            raise SpartaError("--template formats classification inputs; leave it unset for preference pairs")

    def sparse_heads(self, cfg: Any) -> str | None:
        return LanguageModelling().sparse_heads(cfg)

    def heads(self, model: nn.Module, cfg: Any):
        return LanguageModelling().heads(model, cfg)  # the LM head as --lm-head says (frozen by default)

    def encode_options(self, cfg: Any) -> dict[str, Any]:
        return {
            "pair_max_length": cfg.max_length,
            "beta": cfg.beta,
            "dpo_loss": cfg.dpo_loss,
            "label_smoothing": cfg.label_smoothing,
        }

    def saved_encode_options(self, info: dict[str, Any]) -> dict[str, Any]:
        return {
            "pair_max_length": info.get("max_length"),
            "beta": info.get("beta", 0.1),
            "dpo_loss": info.get("dpo_loss", "sigmoid"),
            "label_smoothing": info.get("label_smoothing", 0.0),
        }

    def prepare_evaluation(self, model: nn.Module, method: Any, data: PairEncoded) -> None:
        """A saved run's reference is its method's (the disabled adapter, or full fine-tuning's starting model,
        given by the run layer); a model that is no run is its own reference (no reward metrics)."""
        if method is not None:
            data.reference = (model, method)

    def eval_options(self, cfg: Any, task: Any, tokenizer: Any, final: bool) -> dict[str, Any]:
        """The final metrics add the mean generation length of the first `GENERATION_PROMPTS` prompts of each
        split, unless `--eval-generate false`."""
        wanted = cfg.eval_generate if cfg.eval_generate is not None else True
        if not (final and wanted):
            return {}
        return {"generate": True, "tokenizer": tokenizer, "max_new_tokens": cfg.max_new_tokens}

    def run_settings(self, cfg: Any, heads) -> dict[str, Any]:  # noqa: ANN001
        return {
            "lm_head": cfg.lm_head,
            "lm_head_untied": heads.untied,
            "beta": cfg.beta,
            "dpo_loss": cfg.dpo_loss,
            "label_smoothing": cfg.label_smoothing,
        }

    def data_report(self, enc: dict[str, PairEncoded], task: Any, cfg: Any) -> dict[str, Any]:
        """Pairs kept and dropped per split, and where the pairs came from (file, carved file, hub)."""
        from sparta.tasks.data import data_source

        return {
            "pairs": {split: data.report() for split, data in enc.items()},
            "source": data_source(task, cfg.data_dir),
        }

    def prepare(
        self,
        net: nn.Module,
        method: Any,
        cfg: Any,
        enc: dict,
        *,
        output: Path,
        device,
        pad_id: int,
        rt: Any = None,
    ) -> None:
        """Attach the reference to every split: precomputed log-probs (`--precompute-reference`), else the
        method's reference model (full fine-tuning keeps its frozen copy now)."""
        if cfg.precompute_reference:
            logps = load_or_precompute(
                Path(output) / REFERENCE_FILE,
                net,
                method,
                enc,
                cfg.eval_batch_size or 2 * cfg.batch_size,
                pad_id,
                cfg.padding_side,
                device,
                rt,
            )
            for split, data in enc.items():
                data.reference_logps, data.reference = logps[split], None
            return
        method.keep_reference(net)
        for data in enc.values():
            data.reference = (net, method)
