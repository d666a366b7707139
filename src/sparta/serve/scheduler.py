"""The scheduler: one worker thread that owns the model and runs the queued requests in per-adapter batches.

Requests wait in a bounded queue, grouped by model id. The worker takes the request that has waited longest,
and with it up to `max_batch - 1` more of the same model that may share its batch (`Sampling.batch_key`), in
arrival order; that batch runs to its end with its adapter live (`AdapterPool.use`: switched in place, under
the pool's lock). Switching therefore happens only between batches, and no token of one adapter's answer is
computed with another's deltas. Because every batch holds the oldest waiting request, no adapter starves: a
request with k requests queued before it runs within the next k batches. A full queue refuses a request at once
(`QueueFull`, HTTP 429) and a closed scheduler refuses all (`Unavailable`, HTTP 503); neither waits.

Batches are static (a batch's requests start and end together, each row stopping on its own); requests that
arrive meanwhile wait for the next batch.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from transformers import GenerationConfig

from sparta.errors import SpartaError
from sparta.objectives.generation import generate_batch, generation_config, seeded
from sparta.runs import Loaded
from sparta.serve.adapters import AdapterPool
from sparta.serve.jobs import Job, Rows, Sampling

log = logging.getLogger(__name__)


class QueueFull(SpartaError):
    """The queue holds `max_queue` requests already (HTTP 429)."""


class Unavailable(SpartaError):
    """The server is shutting down (HTTP 503)."""


class Scheduler:
    """Per-adapter batching over one `AdapterPool` (see the module docstring)."""

    def __init__(self, pool: AdapterPool, max_batch: int = 8, max_queue: int = 64):
        if max_batch < 1 or max_queue < 1:
            raise SpartaError(f"max_batch and max_queue must be at least 1, got {max_batch} and {max_queue}")
        self.pool, self.max_batch, self.max_queue = pool, max_batch, max_queue
        self._waiting: dict[str, deque[Job]] = {}
        self._count = 0
        self._closed = False
        self._ready = threading.Condition()
        self.batches = 0  # batches run so far (for /health)
        self.cancelled = 0  # requests whose client hung up before their answer was done
        self._configs: dict[tuple, tuple[Loaded, GenerationConfig]] = {}
        self._worker = threading.Thread(target=self._run, name="sparta-serve-worker", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        return self._count

    def submit(self, job: Job) -> None:
        """Queue `job`, or refuse it at once (`QueueFull`, `Unavailable`)."""
        with self._ready:
            if self._closed:
                raise Unavailable("the server is shutting down; retry against another instance")
            if self._count >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry shortly")
            self._waiting.setdefault(job.model, deque()).append(job)
            self._count += 1
            self._ready.notify()

    def close(self) -> None:
        """Refuse new requests, fail the waiting ones, and stop the worker after its current batch."""
        with self._ready:
            self._closed = True
            left = [job for jobs in self._waiting.values() for job in jobs]
            self._waiting.clear()
            self._count = 0
            self._ready.notify_all()
        for job in left:
            job.send("error", Unavailable("the server shut down before this request ran"))
        self._worker.join(timeout=30)

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting request and those of its model that may join its batch; None once closed."""
        with self._ready:
            while True:
                for jobs in self._waiting.values():  # a cancelled request leaves the queue unanswered
                    for job in [j for j in jobs if j.cancelled.is_set()]:
                        jobs.remove(job)
                        self._count -= 1
                        self.cancelled += 1
                heads = [jobs[0] for jobs in self._waiting.values() if jobs]
                if heads or self._closed:
                    break
                self._ready.wait()
            if self._closed:
                return None
            first = min(heads, key=lambda job: job.created)
            jobs, key = self._waiting[first.model], first.sampling.batch_key()
            batch = [jobs.popleft()]
            if key is not None:
                batch += [job for job in jobs if job.sampling.batch_key() == key][: self.max_batch - 1]
                for job in batch[1:]:
                    jobs.remove(job)
            if not jobs:
                del self._waiting[first.model]
            self._count -= len(batch)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._generate(batch)
            except Exception as err:  # noqa: BLE001 - the request gets the error; the server keeps serving
                if not isinstance(err, SpartaError):
                    log.exception("a batch of %d requests for %s failed", len(batch), batch[0].model)
                for job in batch:
                    job.send("error", err)
            self.batches += 1

    def _generate(self, batch: list[Job]) -> None:
        sampling = batch[0].sampling
        with self.pool.use(batch[0].model) as view:
            longest = max(job.sampling.max_tokens for job in batch)
            config = self._config(batch[0].model, view, longest, sampling)
            rows = Rows(batch, view.tokenizer, config.eos_token_id)
            with view.autocast(), seeded(view.device, sampling.seed):
                generate_batch(
                    view.model, view.tokenizer, [j.ids for j in batch], config, stopping_criteria=[rows]
                )
            rows.finish()
        self.cancelled += rows.cancelled

    def _config(self, name: str, view: Loaded, longest: int, sampling: Sampling) -> GenerationConfig:
        """The batch's generation config, kept per model and settings (finding the stop tokens reads the whole
        vocabulary: milliseconds a batch otherwise)."""
        key = (name, longest, sampling.temperature, sampling.top_p)
        found = self._configs.get(key)
        if found is None or found[0] is not view:  # an adapter unloaded and loaded again is a new view
            config = generation_config(
                view.tokenizer, view.model, longest, sampling.temperature, sampling.top_p
            )
            found = self._configs[key] = (view, config)
        return found[1]
