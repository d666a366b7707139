"""Loading and unloading adapters while serving: a runtime adapter answers as its run and goes away cleanly, a
bad or mismatched one is a 400 naming the reason (a path outside the allowed folders a 403), and the others keep
answering as their runs throughout, also while a load happens between their batches."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from servekit import ADAPTERS, PROMPTS, complete

N = 10


def _all_answer_as_their_runs(server, expected, models=ADAPTERS) -> None:
    client = server.client()
    for model in models:
        assert complete(client, model, PROMPTS[0], False, max_tokens=N)[0] == expected(model, PROMPTS[0], N)


def test_an_adapter_loaded_while_serving_answers_as_its_run_then_unloads(server, runs, expected):
    client = server.client()
    traffic = [(m, p) for m in ADAPTERS for p in PROMPTS]
    with ThreadPoolExecutor(4) as pool:  # the load lands between the batches of this traffic
        answers = pool.map(lambda mp: complete(client, mp[0], mp[1], True, max_tokens=N)[0], traffic)
        assert server.request("POST", "/admin/adapters", {"name": "extra", "path": "extra"}) == (
            200,
            {"id": "extra", "object": "model", "loaded": True},
        )
        assert list(answers) == [expected(m, p, N) for m, p in traffic]
    assert "extra" in [m.id for m in client.models.list().data]
    for stream in (False, True):
        assert complete(client, "extra", PROMPTS[1], stream, max_tokens=N)[0] == expected(
            "extra", PROMPTS[1], N
        )
    assert expected("extra", PROMPTS[1], N) != expected("a", PROMPTS[1], N)
    _all_answer_as_their_runs(server, expected)

    assert server.request("DELETE", "/admin/adapters/extra")[0] == 200
    assert "extra" not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="extra", prompt=PROMPTS[0], max_tokens=2)
    # an absolute path inside the allowed folder loads too, under any free name
    assert server.request("POST", "/admin/adapters", {"name": "again", "path": str(runs["extra"])})[0] == 200
    assert complete(client, "again", PROMPTS[2], False, max_tokens=N)[0] == expected("extra", PROMPTS[2], N)
    assert server.request("DELETE", "/admin/adapters/again")[0] == 200
    _all_answer_as_their_runs(server, expected)


def test_bad_adapters_are_refused_with_the_reason(server, runs, library, expected, instruct_model_dir):
    link = library / "link-outside"
    link.symlink_to(runs["outside"], target_is_directory=True)
    cases = [
        ({"name": "x", "path": "other-base"}, 400, "base model mismatch"),
        ({"name": "x", "path": "lora"}, 400, "only SpaRTA adapters"),
        ({"name": "x", "path": "missing"}, 400, "no run directory 'missing'"),
        ({"name": "x", "path": "../outside"}, 403, "not inside an allowed adapter folder"),
        ({"name": "x", "path": str(runs["outside"])}, 403, "not inside an allowed adapter folder"),
        ({"name": "x", "path": "link-outside"}, 403, "not inside an allowed adapter folder"),
        ({"name": "a", "path": "extra"}, 400, "served already"),
        ({"name": "../x", "path": "extra"}, 400, "adapter name"),
        ({"path": "extra"}, 400, "invalid request: name"),
    ]
    for body, status, reason in cases:
        got_status, got = server.request("POST", "/admin/adapters", body)
        assert got_status == status and reason in got["error"]["message"], (body, got)
    assert server.request("DELETE", f"/admin/adapters/{instruct_model_dir.name}")[0] == 400
    assert server.request("DELETE", "/admin/adapters/nope")[0] == 404
    assert server.request("GET", "/admin/adapters", key="wrong")[0] == 401
    assert [m.id for m in server.client().models.list().data] == [instruct_model_dir.name, *ADAPTERS]
    _all_answer_as_their_runs(server, expected, [*ADAPTERS, instruct_model_dir.name])
