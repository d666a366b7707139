"""Serving many SpaRTA adapters of one base model over the OpenAI HTTP API (`sparta serve`).

`AdapterPool` holds the base model and its adapters (loaded once, checked against the base model's fingerprint,
switched in place); `Scheduler` runs the queued requests in per-adapter batches on one worker thread, switching
only between batches under the pool's lock; `create_app` is the FastAPI app over them (OpenAI endpoints, health,
admin). The CLI (`sparta.cli.serve`) runs it with uvicorn.
"""

from sparta.serve.adapters import AdapterPool, NotAllowed, UnknownModel
from sparta.serve.api import Limits, create_app
from sparta.serve.jobs import Job, Result, Sampling
from sparta.serve.scheduler import QueueFull, Scheduler, Unavailable

__all__ = [
    "AdapterPool",
    "Job",
    "Limits",
    "NotAllowed",
    "QueueFull",
    "Result",
    "Sampling",
    "Scheduler",
    "Unavailable",
    "UnknownModel",
    "create_app",
]
