"""One request's life in the server: a `Job` (its model, prompt ids and sampling) queued by the HTTP layer, and the
`Rows` that follow each job's tokens while its batch generates.

`Rows` is a transformers `StoppingCriteria`: `generate` calls it once a step with every row's ids so far, and it
decides per row whether that row is done (a stop token, its own `max_tokens`, a `stop` string, or its client
gone), while the batch goes on for the others. It decodes each row as it grows and sends the job the text that
is final (held back: a partial UTF-8 character, the start of a possible stop string), so the streamed pieces add
up to the same text as the non-streamed answer, which is what `sparta.objectives.generation.generate` decodes.

A job's events cross from the worker thread to the asyncio loop of its HTTP request through
`loop.call_soon_threadsafe`: ("text", piece) any number of times, then ("done", `Result`) or ("error", exc).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria


@dataclass(frozen=True)
class Sampling:
    """How one request samples (the OpenAI parameters); `stop` strings end the answer before them."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def batch_key(self) -> tuple | None:
        """Requests with equal keys may share a batch: all greedy ones, unseeded sampled ones of one temperature
        and top_p; a seeded sampled request runs alone (its seed decides the batch's random draws)."""
        if self.temperature == 0:
            return ("greedy",)
        if self.seed is not None:
            return None
        return ("sample", self.temperature, self.top_p)


@dataclass
class Result:
    """A finished answer: its text, why it ended ("stop" or "length") and the usage counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Job:
    """A request waiting for, or in, a batch."""

    model: str
    ids: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    created: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, kind: str, value: Any) -> None:
        """Hand an event to the request's loop (from any thread); dropped if that loop has closed."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def cancel(self) -> None:
        """The client went away: the job leaves the queue, or its row ends at the next step."""
        self.cancelled.set()


class _Row:
    def __init__(self, job: Job, tokenizer: Any, stop_ids: set[int]):
        self.job, self.tokenizer, self.stop_ids = job, tokenizer, stop_ids
        self.tokens: list[int] = []
        self.sent = ""
        self.done = False
        self.cancelled = False

    def step(self, token: int) -> None:
        if self.job.cancelled.is_set():
            self.done = self.cancelled = True  # no one to tell
            return
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.job.sampling.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.finish(text[:cut], "stop")
        elif token in self.stop_ids:
            self.finish(text, "stop")
        elif len(self.tokens) >= self.job.sampling.max_tokens:
            self.finish(text, "length")
        else:
            self._send(_settled(text, self.job.sampling.stop))

    def finish(self, text: str, reason: str) -> None:
        self.done = True
        self._send(text)
        usage = (len(self.job.ids), len(self.tokens))
        self.job.send("done", Result(text, reason, *usage))

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.job.send("text", text[len(self.sent) :])
            self.sent = text


def _settled(text: str, stops: tuple[str, ...]) -> str:
    """The part of a growing text that no later token can change: without a trailing partial character and
    without an ending that could be the start of a stop string."""
    text = text.rstrip("\ufffd")
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - hold]


class Rows(StoppingCriteria):
    """The rows of one batch, in the order of its prompts (see the module docstring)."""

    def __init__(self, jobs: list[Job], tokenizer: Any, stop_ids: list[int]):
        self.rows = [_Row(job, tokenizer, set(stop_ids)) for job in jobs]

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if not row.done:
                row.step(token)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    @property
    def cancelled(self) -> int:
        """How many rows ended because their client hung up."""
        return sum(row.cancelled for row in self.rows)

    def finish(self) -> None:
        """End the rows `generate` left running (it stopped at its own length limit)."""
        for row in self.rows:
            if not row.done:
                row.finish(row.tokenizer.decode(row.tokens, skip_special_tokens=True), "length")
