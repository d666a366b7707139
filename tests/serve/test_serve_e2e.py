"""`sparta serve` end to end: a real server process on localhost, called through the official `openai` client.
Each adapter's answer equals `sparta generate` of its run (greedy: token for token, streamed or not, however the
requests were batched and switched), the base model's id answers as the base model, and the parameters
(`stop`, `seed`, `max_tokens`, `usage`) mean what they mean in OpenAI's API."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from servekit import ADAPTERS, PROMPTS, TURNS, complete

from sparta.runs.generation import prompt_ids

N = 12


def test_models_are_the_base_and_its_adapters(server, instruct_model_dir):
    listed = server.client().models.list().data
    assert [m.id for m in listed] == [instruct_model_dir.name, *ADAPTERS]
    assert {m.owned_by for m in listed} == {"sparta"}


def test_each_adapter_answers_as_its_run_streamed_or_not(server, expected, instruct_model_dir):
    models = [*ADAPTERS, instruct_model_dir.name]
    cases = [(m, p, s) for m, p, s in itertools.product(models, [*PROMPTS, TURNS], (False, True))]
    want = {(m, str(p)): expected(m, p, N) for m, p, _ in cases}
    # the check below can tell the models apart: their answers to one prompt differ
    assert len({want[(m, str(PROMPTS[0]))] for m in models}) == len(models)
    client = server.client()
    with ThreadPoolExecutor(8) as pool:  # concurrent, so that requests share batches and adapters switch
        got = list(pool.map(lambda case: complete(client, case[0], case[1], case[2], max_tokens=N), cases))
    for (model, prompt, stream), (text, usage, finish) in zip(cases, got, strict=True):
        assert text == want[(model, str(prompt))], (model, prompt, stream)
        assert usage.prompt_tokens == len(prompt_ids(expected.loaded(model), prompt))
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert (finish == "length") == (usage.completion_tokens == N) and finish in ("stop", "length")


def test_a_stop_string_ends_the_answer_before_it(server, expected):
    answers = ((m, p, expected(m, p, N)) for m in ADAPTERS for p in PROMPTS)
    model, prompt, full = next(a for a in answers if len(a[2].split()) >= 3)
    stop = full.split()[2]
    for stream in (False, True):
        text, _, finish = complete(server.client(), model, prompt, stream, max_tokens=N, stop=[stop, "zzz"])
        assert (text, finish) == (full[: full.index(stop)], "stop")


def test_seeded_sampling_is_sparta_generate_with_that_seed(server, expected):
    want = expected("c", PROMPTS[2], N, temperature=1.3, seed=4)
    client = server.client()
    for _ in range(2):
        reply = client.completions.create(model="c", prompt=PROMPTS[2], max_tokens=N, temperature=1.3, seed=4)
        assert reply.choices[0].text == want
    other = client.completions.create(model="c", prompt=PROMPTS[2], max_tokens=N, temperature=1.3, seed=5)
    assert other.choices[0].text == expected("c", PROMPTS[2], N, temperature=1.3, seed=5)


def test_bad_requests_are_openai_errors(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="a", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        client.completions.create(model="a", prompt="a", max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="a", messages=[{"role": "robot", "content": "a"}], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="n"):
        client.completions.create(model="a", prompt="a", max_tokens=2, n=2)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        server.client(api_key="wrong").models.list()
