"""The HTTP layer: a FastAPI app speaking the OpenAI API (`/v1/models`, `/v1/chat/completions`,
`/v1/completions`, streamed as server-sent events or not), `/health`, and the admin endpoints that load and unload
adapters while serving (`/admin/adapters`).

A request is read (at most `Limits.max_body_bytes`), validated, rendered into prompt ids with the model's own
chat template (`sparta.runs.generation.prompt_ids`, as `sparta generate` renders it), checked against the
prompt and `max_tokens` limits and the context, and queued on the `Scheduler`; its answer comes back as the
worker produces it. Every failure is an OpenAI error body with the status its clients expect: 400 bad input,
401 a wrong API key, 403 a load from outside the allowed folders, 404 an unknown model, 413 a body too large,
429 a full queue, 503 shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from sparta.errors import SpartaError
from sparta.runs.generation import prompt_ids
from sparta.serve.adapters import AdapterPool, NotAllowed, UnknownModel
from sparta.serve.jobs import Job, Result, Sampling
from sparta.serve.scheduler import QueueFull, Scheduler, Unavailable
from sparta.serve.schemas import ChatRequest, CompletionRequest, LoadRequest, _Request, error_body


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the model's context decides
    max_tokens: int = 1024  # the most new tokens a request may ask for
    default_max_tokens: int = 256  # when it asks for none (cut to fit the context)


class ApiError(SpartaError):
    """A refusal with its own HTTP status."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


STATUS = {
    UnknownModel: (404, "model_not_found"),
    NotAllowed: (403, "permission_denied"),
    QueueFull: (429, "queue_full"),
    Unavailable: (503, "unavailable"),
}


def _error(err: SpartaError) -> JSONResponse:
    if isinstance(err, ApiError):
        return JSONResponse(error_body(str(err), err.kind, err.code), status_code=err.status)
    status, code = next((v for k, v in STATUS.items() if isinstance(err, k)), (400, None))
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(error_body(str(err), kind, code), status_code=status)


async def _parse(request: Request, model: type[BaseModel], limit: int) -> BaseModel:
    """The request's JSON body as `model`: 413 past `limit` bytes, 400 if it is not JSON or not valid."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is larger than this server's limit of {limit} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"invalid request: {where}: {first['msg']}") from None


def _sampling(body: _Request, asked: int | None, prompt_tokens: int, context: int | None, limits: Limits):
    """The request's `Sampling`, after its prompt and `max_tokens` are checked against the limits and context."""
    if limits.max_prompt_tokens is not None and prompt_tokens > limits.max_prompt_tokens:
        raise ApiError(
            400,
            f"the prompt has {prompt_tokens} tokens; this server takes at most "
            f"{limits.max_prompt_tokens}: shorten it",
            code="context_length_exceeded",
        )
    if asked is not None and asked > limits.max_tokens:
        raise ApiError(400, f"max_tokens is {asked}; this server gives at most {limits.max_tokens}")
    room = context - prompt_tokens if context is not None else None
    max_tokens = asked or min(limits.default_max_tokens, room if room is not None else limits.max_tokens)
    if room is not None and max_tokens > room:
        raise ApiError(
            400,
            f"the prompt has {prompt_tokens} tokens; with max_tokens {max_tokens} that passes the "
            f"model's context of {context}: shorten it or lower max_tokens",
            code="context_length_exceeded",
        )
    return Sampling(max_tokens, body.temperature, body.top_p, body.seed, body.stops())


async def _hung_up(request: Request) -> None:
    """Returns when the client closes the connection (its body already read, the server sends nothing else)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _result(job: Job, request: Request) -> Result:
    """Wait for the job's answer; a client that hangs up cancels it."""
    watcher = asyncio.ensure_future(_hung_up(request))
    try:
        while True:
            getter = asyncio.ensure_future(job.events.get())
            await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                raise ApiError(499, "the client closed the connection")
            kind, value = getter.result()
            if kind == "done":
                return value
            if kind == "error":
                raise value
    finally:
        watcher.cancel()
        job.cancel()  # nothing once it has finished


def _usage(result: Result) -> dict:
    total = result.prompt_tokens + result.completion_tokens
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": total,
    }


class _Answer:
    """The response documents of one request, chat or text completion."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _doc(self, kind: str, choices: list, **extra) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def full(self, result: Result) -> dict:
        choice = {"index": 0, "logprobs": None, "finish_reason": result.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        return self._doc(
            "chat.completion" if self.chat else "text_completion", [choice], usage=_usage(result)
        )

    def chunk(self, text: str | None, finish: str | None = None, first: bool = False) -> str:
        choice: dict = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["delta"] = {"role": "assistant"} if first else {}
            if text is not None:
                choice["delta"]["content"] = text
        else:
            choice["text"] = text or ""
        return _event(self._doc("chat.completion.chunk" if self.chat else "text_completion", [choice]))

    def usage_chunk(self, result: Result) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return _event(self._doc(kind, [], usage=_usage(result)))


def _event(document: dict) -> str:
    return f"data: {json.dumps(document, ensure_ascii=False)}\n\n"


async def _stream(job: Job, answer: _Answer, include_usage: bool) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer; a client that hangs up cancels the job."""
    try:
        if answer.chat:
            yield answer.chunk("", first=True)
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                yield answer.chunk(value)
            elif kind == "done":
                yield answer.chunk(None if answer.chat else "", value.finish_reason)
                if include_usage:
                    yield answer.usage_chunk(value)
                break
            else:
                failed = isinstance(value, SpartaError)
                message = str(value) if failed else "the server failed to generate this answer"
                yield _event(error_body(message, "invalid_request_error" if failed else "server_error"))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def create_app(
    pool: AdapterPool, scheduler: Scheduler, limits: Limits = Limits(), api_key: str | None = None
):
    """The FastAPI app serving `pool` through `scheduler` (closed when the app shuts down)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        scheduler.close()

    app = FastAPI(title="sparta serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    started = int(time.time())

    def authorised(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if api_key and not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(
                401,
                "a valid API key is required: send 'Authorization: Bearer KEY'",
                kind="authentication_error",
                code="invalid_api_key",
            )

    auth = [Depends(authorised)]

    @app.exception_handler(SpartaError)
    async def sparta_error(request: Request, err: SpartaError) -> JSONResponse:
        return _error(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(ApiError(400, f"invalid request: {err.errors()[0]['msg']}"))

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        return _error(ApiError(500, "the server failed to answer this request", kind="server_error"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(ApiError(err.status_code, str(err.detail)))

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "models": pool.names,
            "queued": scheduler.queued,
            "batches": scheduler.batches,
            "cancelled": scheduler.cancelled,
        }

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict:
        data = [
            {
                "id": n,
                "object": "model",
                "created": started,
                "owned_by": "sparta",
                "parent": None if n == pool.base_name else pool.base_name,
            }
            for n in pool.names
        ]
        return {"object": "list", "data": data}

    async def answer(request: Request, body: _Request, chat: bool, ids: list[int], asked: int | None):
        sampling = _sampling(body, asked, len(ids), pool.view(body.model).context, limits)
        job = Job(body.model, ids, sampling, asyncio.get_running_loop())
        scheduler.submit(job)
        reply = _Answer(chat, body.model)
        if body.stream:
            return StreamingResponse(
                _stream(job, reply, body.include_usage()), media_type="text/event-stream"
            )
        return reply.full(await _result(job, request))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(request: Request):  # noqa: ANN202
        body = await _parse(request, ChatRequest, limits.max_body_bytes)
        ids = prompt_ids(pool.view(body.model), [m.turn() for m in body.messages])
        return await answer(request, body, True, ids, body.max_completion_tokens or body.max_tokens)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request):  # noqa: ANN202
        body = await _parse(request, CompletionRequest, limits.max_body_bytes)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1 or not prompts[0]:
            raise ApiError(
                400, "prompt must be one non-empty string (send several prompts as several requests)"
            )
        return await answer(
            request, body, False, prompt_ids(pool.view(body.model), prompts[0]), body.max_tokens
        )

    @app.get("/admin/adapters", dependencies=auth)
    async def adapters() -> dict:
        return {
            "base": pool.base_name,
            "adapters": [n for n in pool.names if n != pool.base_name],
            "allowed_folders": [str(p) for p in pool.allowed],
        }

    @app.post("/admin/adapters", dependencies=auth)
    async def load(request: Request) -> dict:
        body = await _parse(request, LoadRequest, limits.max_body_bytes)
        await run_in_threadpool(pool.load, body.name, pool.runtime_dir(body.path))
        return {"id": body.name, "object": "model", "loaded": True}

    @app.delete("/admin/adapters/{name:path}", dependencies=auth)
    async def unload(name: str) -> dict:
        await run_in_threadpool(pool.unload, name)
        return {"id": name, "object": "model", "deleted": True}

    return app
