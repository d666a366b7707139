"""Faults, each answered cleanly at once, after which the server still answers correctly: a client that hangs up
mid-stream or before its answer, invalid JSON, a body or prompt too large, an unknown model, a full queue."""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from servekit import API_KEY, MAX_BODY, MAX_PROMPT_TOKENS, PROMPTS, complete, serving

N = 10


def _still_serving(server, expected) -> None:
    assert server.alive()
    for model in ("a", "b"):
        for stream in (False, True):
            assert complete(server.client(), model, PROMPTS[3], stream, max_tokens=N)[0] == expected(
                model, PROMPTS[3], N
            )


def _queue_drains(server) -> None:
    deadline = time.monotonic() + 60
    while server.request("GET", "/health")[1]["queued"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.request("GET", "/health")[1]["queued"] == 0


def test_a_client_that_hangs_up_mid_stream_or_before_its_answer(server, expected):
    # this answer runs its 64 tokens (no stop token before), so hanging up after the first one leaves work undone
    assert expected("a", PROMPTS[0], 64) != expected("a", PROMPTS[0], 63)
    before = server.request("GET", "/health")[1]["cancelled"]
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for stream in (True, False):
        body = {"model": "a", "prompt": PROMPTS[0], "max_tokens": 64, "temperature": 0, "stream": stream}
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
        if stream:  # gone after the first event
            response = conn.getresponse()
            assert response.status == 200 and response.readline().startswith(b"data: {")
        else:  # gone before its answer
            time.sleep(0.02)
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    _queue_drains(server)
    _still_serving(server, expected)
    # the streamed request stopped at its client's hang-up instead of running to its end
    assert server.request("GET", "/health")[1]["cancelled"] > before


def test_malformed_requests_are_clean_errors(server, expected):
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "invalid request"),
        (json.dumps({"prompt": "a"}), 400, "invalid request: model"),
        (json.dumps({"model": "a", "prompt": "a", "temperature": -1}), 400, "temperature"),
        (json.dumps({"model": "a", "prompt": ""}), 400, "one non-empty string"),
        (json.dumps({"model": "a", "prompt": "good " * 2000}), 413, f"limit of {MAX_BODY} bytes"),
        (json.dumps({"model": "nope", "prompt": "a"}), 404, "does not exist"),
    ]
    for body, status, reason in cases:
        got_status, got = server.request("POST", "/v1/completions", body)
        assert got_status == status and reason in got["error"]["message"], (body[:40], got)
    with pytest.raises(openai.BadRequestError, match=f"at most {MAX_PROMPT_TOKENS}"):
        server.client().completions.create(model="a", prompt="good " * 60, max_tokens=2)
    assert server.request("GET", "/nowhere")[0] == 404
    _still_serving(server, expected)


@pytest.fixture(scope="module")
def small_queue(runs, instruct_model_dir, tmp_path_factory):
    """A server that runs one request at a time and queues one more."""
    argv = [
        str(instruct_model_dir),
        f"--adapter=a={runs['a']}",
        f"--adapter=b={runs['b']}",
        "--max-queue",
        "1",
        "--max-batch",
        "1",
    ]
    with serving(argv, tmp_path_factory.mktemp("small-queue") / "server.log") as running:
        yield running


def test_a_full_queue_answers_429_at_once(small_queue, expected):
    client = small_queue.client()
    prompts = [("a" if i % 2 else "b", PROMPTS[i % len(PROMPTS)]) for i in range(12)]

    def ask(case):
        try:
            return complete(client, case[0], case[1], False, max_tokens=100)[0]
        except openai.RateLimitError as err:
            assert "queue is full" in str(err)
            return None

    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(ask, prompts))
    refused = [g for g in got if g is None]
    assert 0 < len(refused) < len(prompts) - 1
    for (model, prompt), text in zip(prompts, got, strict=True):
        assert text is None or text == expected(model, prompt, 100)
    with pytest.raises(openai.BadRequestError, match="context of 128"):
        client.completions.create(model="a", prompt=PROMPTS[0], max_tokens=200)
    _still_serving(small_queue, expected)
