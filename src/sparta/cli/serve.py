"""`sparta serve`: one base model and any number of SpaRTA adapters of it over the OpenAI HTTP API (uvicorn)."""

from __future__ import annotations

import argparse
import logging
import os

from sparta.adapter.config import DTYPE_NAMES
from sparta.cli.evaluate import add_precision_argument
from sparta.errors import SpartaError
from sparta.serve import AdapterPool, Limits, Scheduler, create_app

log = logging.getLogger(__name__)
KEY_VARIABLE = "SPARTA_API_KEY"

EPILOG = f"""examples:
  sparta serve smollm2-135m-instruct --adapter gsm8k=runs/gsm8k --adapter sst2=runs/sst2-sft
  sparta serve runs/gsm8k --port 9000 --adapter-root runs/

BASE_OR_RUN is a base model (registry alias, hub id or directory) or a SpaRTA SFT run (its base model is served,
and the run as an adapter named after its directory). Each --adapter NAME=RUN_DIR is a SpaRTA language-modelling
run of that base model, served as model id NAME; the base model's id is its name (a directory's own name).
Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (OpenAI's, streamed or not),
GET /health; GET/POST /admin/adapters and DELETE /admin/adapters/NAME load and unload adapters at runtime, from
the --adapter-root folders only. The API key is --api-key or ${KEY_VARIABLE}; clients send it as a bearer token."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a base model and its SpaRTA adapters over the OpenAI HTTP API",
        description="Serve one base model and its SpaRTA adapters, each a model id of an OpenAI-compatible "
        "HTTP API; requests are batched per adapter, adapters switched in place between batches.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "base", metavar="BASE_OR_RUN", help="base model (alias, hub id, directory) or SpaRTA run"
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="a SpaRTA SFT run served as model id NAME (repeatable)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--api-key", help=f"require this bearer token (default: ${KEY_VARIABLE}, else none)")
    parser.add_argument(
        "--adapter-root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder runtime loads may read adapters from (repeatable; default: none, loads off)",
    )
    parser.add_argument("--base-name", help="model id of the base model (default: its name)")
    parser.add_argument("--max-batch", type=int, default=8, help="requests per batch (default: 8)")
    parser.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429 (default: 64)")
    parser.add_argument(
        "--max-tokens-limit",
        type=int,
        default=1024,
        help="most new tokens a request may ask for (default: 1024)",
    )
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=256,
        help="new tokens when a request names no max_tokens (default: 256)",
    )
    parser.add_argument("--max-prompt-tokens", type=int, help="longest prompt (default: the model's context)")
    parser.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="largest request body (default: 1 MiB)"
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="the weights' dtype (default: float32)")
    add_precision_argument(parser)
    parser.set_defaults(func=run)


def adapters_of(specs: list[str]) -> dict[str, str]:
    """{name: run dir} of the --adapter NAME=RUN_DIR flags."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SpartaError(f"--adapter {spec!r}: write NAME=RUN_DIR, e.g. --adapter gsm8k=runs/gsm8k")
        if name in out:
            raise SpartaError(f"--adapter {name} is given twice; each adapter needs its own name")
        out[name] = path
    return out


def limits_of(args: argparse.Namespace) -> Limits:
    numbers = {
        "--max-batch": args.max_batch,
        "--max-queue": args.max_queue,
        "--max-tokens-limit": args.max_tokens_limit,
        "--default-max-tokens": args.default_max_tokens,
        "--max-prompt-tokens": args.max_prompt_tokens,
        "--max-body-bytes": args.max_body_bytes,
    }
    for flag, value in numbers.items():
        if value is not None and value < 1:
            raise SpartaError(f"{flag} must be at least 1, got {value}")
    return Limits(
        args.max_body_bytes,
        args.max_prompt_tokens,
        args.max_tokens_limit,
        min(args.default_max_tokens, args.max_tokens_limit),
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    adapters, limits = adapters_of(args.adapter), limits_of(args)
    roots = [os.path.abspath(r) for r in args.adapter_root]
    for root in roots:
        if not os.path.isdir(root):
            raise SpartaError(f"--adapter-root {root} is not a directory")
    api_key = args.api_key or os.environ.get(KEY_VARIABLE) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s with no API key: anyone who reaches this port can use it", args.host)
    pool = AdapterPool.open(
        args.base,
        adapters,
        device=args.device,
        dtype=args.dtype,
        precision=args.precision,
        allowed=roots,
        base_name=args.base_name,
    )
    scheduler = Scheduler(pool, max_batch=args.max_batch, max_queue=args.max_queue)
    app = create_app(pool, scheduler, limits, api_key)
    print(f"serving {', '.join(pool.names)} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
