"""Weight sync: the updates `DeltaSync` yields rebuild the trained model on a generator that holds W0."""

from __future__ import annotations

import copy

import torch

from sparta.adapter.config import SpartaConfig
from sparta.adapter.model import get_sparta_model
from sparta.adapter.sync import DeltaSync, TrainableSync, parameter_bytes


def _tiny(seed: int = 0):
    from tinylm import make_causal_lm

    return make_causal_lm(vocab_size=48, tied=False, seed=seed)


def test_delta_sync_yields_only_what_changed_and_rebuilds_the_merged_model():
    base = _tiny()
    generator = copy.deepcopy(base)  # holds W0, as a separate inference engine would
    net = get_sparta_model(base, SpartaConfig(density=0.05, seed=3))
    sync = DeltaSync(net)
    assert list(sync.changes()) == []  # nothing trained yet: nothing to send
    deltas = net.delta_parameters()
    with torch.no_grad():
        for d in deltas.values():
            d.normal_()
    updates = list(sync.changes())
    assert {u.name for u in updates} == set(deltas) and all(u.positions_known for u in updates)
    m = sum(d.numel() for d in deltas.values())
    assert sum(u.nbytes for u in updates) == 4 * m < parameter_bytes(generator) / 10
    assert list(sync.changes()) == []  # sent
    first = next(iter(deltas))
    with torch.no_grad():
        deltas[first][:3] += 1.0  # three entries of one weight change
    (partial,) = sync.changes()
    assert partial.name == first and not partial.positions_known and partial.positions.numel() == 3
    assert partial.nbytes == 3 * (4 + 4)  # values and their int32 positions
    for u in [*updates, partial]:  # what the generator does with them
        with torch.no_grad():
            generator.get_parameter(u.name).view(-1)[u.positions] = u.values
    merged = net.merge_and_unload()
    for name, p in merged.named_parameters():
        assert torch.equal(p, generator.get_parameter(name)), name


def test_trainable_sync_sends_changed_tensors_whole():
    model = _tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)
    sync = TrainableSync(model)
    assert list(sync.changes()) == []
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1
    (update,) = sync.changes()
    assert update.name == "lm_head.weight" and update.nbytes == 4 * model.lm_head.weight.numel()
