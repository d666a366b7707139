"""Fuzz the adapter loader: damaged files must give a clear SpartaError (never a crash or a hang) and leave the
base model untouched."""

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparta import SpartaConfig, SpartaError, SpartaModel, get_sparta_model
from sparta.adapter.io import CONFIG_NAME, WEIGHTS_NAME
from tinyconfigs import tiny_classifier

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", params=["seed", "coo16", "flat32"])
def saved(tmp_path_factory, request):
    sm = get_sparta_model(tiny_classifier(), SpartaConfig(density=0.1, target_modules=["v_proj", "o_proj"]))
    with torch.no_grad():
        for p in sm.delta_parameters().values():
            p.normal_()
    path = tmp_path_factory.mktemp(f"adapter-{request.param}")
    sm.save_pretrained(path, index_format=request.param, delta_dtype="bfloat16")
    return path


def _load_expecting_clean_failure(path):
    base = tiny_classifier()
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    try:
        SpartaModel.from_pretrained(base, path)
    except SpartaError as err:
        assert str(err)
        assert not any("sparta" in n for n, _ in base.named_parameters())
        assert all(torch.equal(before[n], p) for n, p in base.named_parameters())
        return False
    return True


def _copy(saved, tmp_path_factory):
    target = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(saved, target, dirs_exist_ok=True)
    return target


@FUZZ
@given(data=st.data())
def test_truncated_weights(saved, tmp_path_factory, data):
    path = _copy(saved, tmp_path_factory)
    blob = (path / WEIGHTS_NAME).read_bytes()
    cut = data.draw(st.integers(0, len(blob) - 1))
    (path / WEIGHTS_NAME).write_bytes(blob[:cut])
    assert not _load_expecting_clean_failure(path)


@FUZZ
@given(data=st.data())
def test_bit_flipped_weights(saved, tmp_path_factory, data):
    path = _copy(saved, tmp_path_factory)
    blob = bytearray((path / WEIGHTS_NAME).read_bytes())
    positions = data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=4, unique=True))
    for pos in positions:
        blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    (path / WEIGHTS_NAME).write_bytes(bytes(blob))
    assert not _load_expecting_clean_failure(path)


@FUZZ
@given(data=st.data())
def test_bit_flipped_config_never_crashes(saved, tmp_path_factory, data):
    path = _copy(saved, tmp_path_factory)
    blob = bytearray((path / CONFIG_NAME).read_bytes())
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    (path / CONFIG_NAME).write_bytes(bytes(blob))
    _load_expecting_clean_failure(path)  # loading may succeed (e.g. a flipped space), but only cleanly


@FUZZ
@given(field=st.sampled_from(["count", "shape", "density"]), value=st.integers(-(2**40), 2**40))
def test_size_mismatched_config(saved, tmp_path_factory, field, value):
    path = _copy(saved, tmp_path_factory)
    document = json.loads((path / CONFIG_NAME).read_text())
    name = next(iter(document["params"]))
    meta = document["params"][name]
    meta[field] = [value, 3] if field == "shape" else value
    (path / CONFIG_NAME).write_text(json.dumps(document))
    assert not _load_expecting_clean_failure(path)
