"""The preference (DPO) objective on a tiny Llama with the word-level chat tokenizer: the loss against a hand
computation from the model's own logits, the reference as a disabled adapter (bitwise the base model's log-probs,
sparta and lora), SpaRTA's gradients against a separate policy and frozen reference, and bad pairs dropped and
counted."""

from __future__ import annotations

import contextlib
import copy
import math
from types import SimpleNamespace

import pytest
import torch

from sparta.methods import get_method
from sparta.objectives import Preference
from sparta.objectives.preference import DPOSettings, batch_loss, reference_logps, sequence_logps
from tinylm import make_causal_lm, make_tokenizer

PREF = Preference()
TASK = SimpleNamespace(name="toy-pref", max_length=64, system_prompt=None)
ROWS = [
    {"prompt": "the movie was", "chosen": "good .", "rejected": "bad !"},
    {"prompt": [{"role": "user", "content": "a plot"}], "chosen": "Yes really good", "rejected": "No"},
    {
        "prompt": "the actor is",
        "chosen": [{"role": "assistant", "content": "quite good"}],
        "rejected": "bad bad bad",
    },
]


def _cfg() -> SimpleNamespace:
    return SimpleNamespace(
        density=0.3,
        targets=None,
        seed=0,
        index_seed=None,
        lm_head="frozen",
        lora_r=4,
        lora_alpha=8.0,
        lora_dropout=0.0,
    )


@pytest.fixture
def tok():
    return make_tokenizer(chat=True)


def _encode(tok, rows=ROWS, **kw):  # noqa: ANN001, ANN003, ANN202
    return PREF.encode(rows, TASK, tok, True, **kw)


def _logps_by_hand(model, ids: list[int], mask: list[int]) -> float:
    """Summed log-probs of the masked tokens from the model's own full logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(float(logits[i - 1, ids[i]]) for i in range(1, len(ids)) if mask[i])


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_the_reply_mask_covers_the_last_assistant_turn_only(tok):
    data = _encode(
        tok,
        [
            {
                "prompt": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "No"},
                    {"role": "user", "content": "the plot"},
                ],
                "chosen": "good",
                "rejected": "bad",
            }
        ],
    )
    ids, mask = data.chosen_ids[0], data.chosen_mask[0]
    reply = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert reply.split() == ["good", "<|im_end|>"]  # the earlier "No" is prompt, the end of turn a target
    assert data.prompts[0] == ids[: mask.index(1)]  # generation starts where the reply does


@pytest.mark.parametrize(
    "settings", [DPOSettings(), DPOSettings(0.5, "sigmoid", 0.2), DPOSettings(0.3, "ipo")]
)
def test_the_dpo_loss_matches_a_hand_computation(tok, settings):
    policy, ref = (
        make_causal_lm(len(tok), tied=False, seed=0).eval(),
        make_causal_lm(len(tok), False, seed=1).eval(),
    )
    data = _encode(tok, beta=settings.beta, dpo_loss=settings.loss, label_smoothing=settings.label_smoothing)
    data.reference = (ref, SimpleNamespace(reference=contextlib.nullcontext))  # a separate reference model
    got = batch_loss(policy, data, [0, 1, 2], tok.pad_token_id, "right", "cpu")
    expected = 0.0
    for i in range(3):
        pc = _logps_by_hand(policy, data.chosen_ids[i], data.chosen_mask[i])
        pr = _logps_by_hand(policy, data.rejected_ids[i], data.rejected_mask[i])
        rc = _logps_by_hand(ref, data.chosen_ids[i], data.chosen_mask[i])
        rr = _logps_by_hand(ref, data.rejected_ids[i], data.rejected_mask[i])
        b, e = settings.beta, settings.label_smoothing
        if settings.loss == "ipo":
            nc, nr = sum(data.chosen_mask[i][1:]), sum(data.rejected_mask[i][1:])
            h = (pc - rc) / nc - (pr - rr) / nr
            expected += (h - 1 / (2 * b)) ** 2
        else:
            h = (pc - rc) - (pr - rr)
            expected += -(1 - e) * math.log(_sigmoid(b * h)) - e * math.log(_sigmoid(-b * h))
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("method", ["sparta", "lora"])
def test_the_reference_is_the_disabled_adapter_bitwise(tok, method):
    """After the adapter moved, the disabled-adapter log-probs equal a separately built base model's, bit for bit."""
    base = make_causal_lm(len(tok), tied=False, seed=0).eval()
    separate = copy.deepcopy(base)
    m = get_method(method)
    net = m.apply(base, _cfg(), PREF)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    data = _encode(tok)
    data.reference = (net, m)
    idx = [0, 1, 2]
    ref = reference_logps(data, idx, tok.pad_token_id, "right", "cpu")
    with torch.no_grad():
        own = sequence_logps(separate, data, idx, tok.pad_token_id, "right", "cpu")[0]
    policy = sequence_logps(net, data, idx, tok.pad_token_id, "right", "cpu")[0].detach()
    assert torch.equal(ref, own)
    assert not torch.allclose(policy, own)  # the adapter is active again after the reference ran


def test_records_are_each_pairs_verdict_and_margin_against_the_reference(tok):
    """Per-pair records: their means are the split's preference accuracy and reward margin; without a
    reference only the policy's own log-prob preference is recorded."""
    base = make_causal_lm(len(tok), tied=False, seed=0).eval()
    m = get_method("sparta")
    net = m.apply(base, _cfg(), PREF)
    data = _encode(tok)
    alone: list = []
    zero_shot = PREF.evaluate(net, data, TASK, 2, tok.pad_token_id, "right", "cpu", records=alone)
    assert "correct" not in alone[0] and "margin" not in alone[0]
    assert sum(r["prefer"] for r in alone) / len(alone) == pytest.approx(zero_shot["logprob_preference"])
    with torch.no_grad():
        for d in net.delta_parameters().values():
            d.add_(torch.randn_like(d) * 0.05)
    data.reference = (net, m)
    records: list = []
    got = PREF.evaluate(net, data, TASK, 2, tok.pad_token_id, "right", "cpu", records=records)
    assert [r["index"] for r in records] == list(range(len(data)))
    assert sum(r["correct"] for r in records) / len(data) == pytest.approx(got["preference_accuracy"])
    assert sum(r["margin"] for r in records) / len(data) == pytest.approx(got["reward_margin"], rel=1e-5)
    assert len({r["key"] for r in records}) == len(data)
    assert any(r["margin"] != 0 for r in records)


def test_sparta_gradients_match_a_separate_policy_and_frozen_reference(tok):
    """The in-place fast path: the reference forward (disabled adapter) runs before the policy's, so the policy's
    backward sees its own merged weights; gradients equal those of two separate models."""
    base = make_causal_lm(len(tok), tied=False, seed=0).eval()
    frozen = copy.deepcopy(base)
    m = get_method("sparta")
    net = m.apply(base, _cfg(), PREF)
    with torch.no_grad():
        for d in net.delta_parameters().values():
            d.add_(torch.randn_like(d) * 0.05)
    data = _encode(tok)
    two = copy.deepcopy(data)
    data.reference = (net, m)
    batch_loss(net, data, [0, 1, 2], tok.pad_token_id, "right", "cpu").backward()
    got = {n: p.grad.clone() for n, p in net.delta_parameters().items()}
    net.zero_grad(set_to_none=True)
    two.reference_logps = sequence_logps(frozen, two, [0, 1, 2], tok.pad_token_id, "right", "cpu")[0].detach()
    batch_loss(net, two, [0, 1, 2], tok.pad_token_id, "right", "cpu").backward()
    for name, p in net.delta_parameters().items():
        scale = float(p.grad.abs().max())
        assert scale > 0
        # the two paths round differently (the reference's log-probs enter the loss through other sums): equal up
        # to float32 rounding at the gradient's own scale; a wrong reference differs at that scale itself
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-5 * scale)


def test_bad_pairs_are_dropped_and_counted(tok):
    rows = [
        *ROWS,
        {"prompt": "a", "chosen": "good", "rejected": "good"},
        {"prompt": "a", "chosen": "good"},
        {"prompt": "a", "chosen": " ", "rejected": "bad"},
        {
            "chosen": "\n\nHuman: the plot\n\nAssistant: good",
            "rejected": "\n\nHuman: the plot\n\nAssistant: bad",
        },
    ]
    data = _encode(tok, rows)
    assert len(data) == 4 and data.invalid == {"identical": 1, "missing field rejected": 1, "empty reply": 1}
    assert tok.decode(data.chosen_ids[3]).split()[:3] == ["<|im_start|>", "user", "the"]  # hh-rlhf split
    short = _encode(tok, ROWS, max_length=11)
    assert short.dropped == 3 - len(short) == 1  # the third pair: a 12-token rejected sequence
    assert _encode(tok, ROWS, max_length=500, truncate=True, pair_max_length=11).dropped == short.dropped
