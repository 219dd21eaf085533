"""`servetrace serve`: our engine behind an OpenAI-compatible HTTP server (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse
import socket
import sys

from tracer.commands._engine_options import add_engine_options, add_trace_options, engine_config_from_args, start_tracing, stop_tracing


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve our engine over an OpenAI-compatible HTTP API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None, help="model name clients use (default: the model file's stem)")
    parser.add_argument("--max-queue", type=int, default=256, help="requests in flight before new ones get 503 (default: 256)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds in-flight requests get to finish on shutdown")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_engine_options(parser)
    add_trace_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from engine.llm_engine import LLMEngine
    from engine.server import build_app

    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be at least 1, got {args.max_queue}")
    if args.shutdown_timeout < 0:
        raise ValueError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    config = engine_config_from_args(args)
    # Take the port before the model loads (seconds), so a port in use fails at once.
    listener = _listen(args.host, args.port)
    host, port = listener.getsockname()[:2]
    traced = start_tracing(args)
    print("loading model...", file=sys.stderr, flush=True)
    engine = LLMEngine(config)
    app = build_app(engine, args.served_model_name, max_queue=args.max_queue, shutdown_timeout=args.shutdown_timeout)
    name = app.state.serving.served_model_name
    print(f"serving {name!r} on http://{host}:{port}/v1 (KV pool: {config.cache.num_blocks} blocks)", file=sys.stderr, flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=args.log_level,
            # uvicorn waits this long for open connections (streams) before cancelling them;
            # the app's own shutdown then aborts whatever is left in the engine.
            timeout_graceful_shutdown=args.shutdown_timeout,
        )
    )
    try:
        server.run(sockets=[listener])
    finally:
        if traced:
            stop_tracing()  # flushes the exporters
    return 0


def _listen(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener
