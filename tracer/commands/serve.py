"""`servetrace serve`: our engine behind an OpenAI-compatible HTTP server (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from tracer.commands._engine_options import add_engine_options, add_trace_options, engine_config_from_args, start_tracing, stop_tracing
from tracer.commands._ports import listen

API_KEY_ENV = "SERVETRACE_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve our engine over an OpenAI-compatible HTTP API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None, help="model name clients use (default: the model file's stem)")
    parser.add_argument("--max-queue", type=int, default=256, help="requests in flight before new ones get 503 (default: 256)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds in-flight requests get to finish on shutdown")
    parser.add_argument("--api-key", default=None, help=f"require `Authorization: Bearer KEY` on /v1 routes "
                        f"(default: ${API_KEY_ENV}; /health stays open)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_engine_options(parser)
    add_trace_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Everything that can fail on the user's input fails before the imports below (torch, the
    # model): the flags first, then the port, which is taken here and handed to uvicorn.
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be at least 1, got {args.max_queue}")
    if args.shutdown_timeout < 0:
        raise ValueError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    config = engine_config_from_args(args)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    listener = listen(args.host, args.port)
    host, port = listener.getsockname()[:2]
    if api_key is None and not _is_loopback(host):
        print(f"warning: serving on {host} without --api-key (or {API_KEY_ENV}): anyone who can reach "
              f"port {port} can use this server", file=sys.stderr, flush=True)

    import uvicorn

    from engine.llm_engine import LLMEngine
    from engine.server import build_app

    traced = start_tracing(args)
    print("loading model...", file=sys.stderr, flush=True)
    engine = LLMEngine(config)
    app = build_app(engine, args.served_model_name, max_queue=args.max_queue, shutdown_timeout=args.shutdown_timeout,
                    api_key=api_key)
    name = app.state.serving.served_model_name
    auth = "; requests need Authorization: Bearer <key>" if api_key else ""
    ready_line = f"serving {name!r} on http://{host}:{port}/v1 (KV pool: {config.cache.num_blocks} blocks{auth})"

    class AnnouncingServer(uvicorn.Server):
        """Says where it serves once uvicorn listens and has taken SIGINT / SIGTERM over: a Ctrl-C
        after the line always shuts it down (one that came before uvicorn's capture_signals, in
        asyncio.run's own SIGINT handling, could cancel the startup and leave the server running)."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                print(ready_line, file=sys.stderr, flush=True)

    server = AnnouncingServer(
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


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
