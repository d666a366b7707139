"""Helpers of the serving tests: a real `sparta serve` process on a free localhost port, the official `openai`
client pointed at it, and raw HTTP for what that client cannot send (invalid JSON, a hang-up mid-stream)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[2]
ADAPTERS = ("a", "b", "c", "d")
API_KEY = "test-key"
MAX_PROMPT_TOKENS, MAX_TOKENS, MAX_BODY = 40, 64, 8192
PROMPTS = ["the movie was good", "a very bad plot", "the actor is really good !", "music , story and ending"]
TURNS = [
    {"role": "user", "content": "good"},
    {"role": "assistant", "content": "Yes"},
    {"role": "user", "content": "a bad scene"},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running `sparta serve` (see `serving`)."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path, api_key: str | None):
        self.process, self.port, self.log, self.api_key = process, port, log, api_key
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kw) -> openai.OpenAI:
        """The official client, without retries (a 429 must reach the test)."""
        options = {
            "base_url": f"{self.url}/v1",
            "api_key": self.api_key or "none",
            "max_retries": 0,
            "timeout": 120,
        }
        return openai.OpenAI(**{**options, **kw})

    def request(self, method: str, path: str, body: bytes | str | dict | None = None, key: str | None = None):
        """(status, parsed JSON body) of one raw request; `key` overrides the server's API key."""
        data = json.dumps(body) if isinstance(body, dict) else body
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key or self.api_key}"}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def serving(argv: list[str], log: Path, api_key: str | None = None, startup_s: float = 180):
    """A `sparta serve ARGV` process on a free port, ready (its /health answers), stopped on exit."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_MIXED_PRECISION": "no",
    }
    if api_key:
        argv = [*argv, "--api-key", api_key]
    command = [sys.executable, "-m", "sparta.cli", "serve", *argv, "--port", str(port), "--device", "cpu"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(process, port, log, api_key)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            assert server.alive(), f"sparta serve exited:\n{server.log_tail()}"
            assert time.monotonic() < deadline, f"sparta serve did not start:\n{server.log_tail()}"
            try:
                if server.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def complete(client: openai.OpenAI, model: str, prompt, stream: bool, **kw) -> tuple[str, object, str]:
    """(text, usage, finish reason) of one greedy request: a string prompt through /v1/completions, chat turns
    through /v1/chat/completions; streamed answers are joined from their pieces."""
    chat = not isinstance(prompt, str)
    kw = {"model": model, "temperature": 0, "stream": stream, **kw}
    if stream:
        kw["stream_options"] = {"include_usage": True}
    api = client.chat.completions if chat else client.completions
    reply = api.create(messages=prompt, **kw) if chat else api.create(prompt=prompt, **kw)
    if not stream:
        choice = reply.choices[0]
        return (choice.message.content if chat else choice.text), reply.usage, choice.finish_reason
    pieces, usage, finish = [], None, None
    for chunk in reply:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append((choice.delta.content if chat else choice.text) or "")
            finish = choice.finish_reason or finish
    return "".join(pieces), usage, finish
