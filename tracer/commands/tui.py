"""`servetrace tui TRACE [TRACE2 ...]`: open the trace explorer (a Rich summary with no terminal).
`servetrace tui --listen [HOST:]PORT`: the explorer filled live by an OTLP/HTTP receiver."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

LISTEN_HELP = (
    "receive OTLP/HTTP on [HOST:]PORT (default 127.0.0.1:4318; POST /v1/traces, protobuf or JSON) and fill "
    "the explorer as spans arrive. Point servetrace's plugin at it with SERVETRACE_OTLP=http://127.0.0.1:4318. "
    "vLLM's and SGLang's own tracing (--otlp-traces-endpoint) exports gRPC by default, which this receiver "
    "does not serve: set OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf in the server's environment and "
    "give the endpoint as http://127.0.0.1:4318/v1/traces"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tui",
        help="explore a trace file, or a live server's spans (--listen): requests, hop waterfall, source, compare",
        description=(
            "Open the Textual trace explorer on an OTLP/JSON-lines trace file. With a second trace (the same "
            "workload replayed through another engine, e.g. `servetrace replay` writes trace-mini.jsonl "
            "and trace-vllm.jsonl) the compare view aligns both step by step. Without a terminal, or "
            "with --summary, prints a summary instead. With --listen, receives spans from a running "
            "server instead of reading a file."
        ),
    )
    parser.add_argument("traces", nargs="*", metavar="TRACE",
                        help="trace files (OTLP/JSON lines); the compare view aligns the last two")
    parser.add_argument("--summary", action="store_true", help="print a Rich summary instead of opening the explorer")
    parser.add_argument("--listen", nargs="?", const="127.0.0.1:4318", default=None, metavar="[HOST:]PORT",
                        help=LISTEN_HELP)
    parser.add_argument("--save", metavar="FILE", default=None,
                        help="with --listen: keep every export received in FILE as OTLP/JSON lines (the trace file "
                             "format; a rerun replaces the file)")
    parser.add_argument("--window", type=int, default=None, metavar="N",
                        help="with --listen: keep the last N requests (default 200); older ones are dropped, and "
                             "the explorer says how many")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.listen is not None:
        return listen(args)
    if args.save or args.window is not None:
        raise ValueError("--save and --window go with --listen")
    if not args.traces:
        raise ValueError("give a trace file, or --listen [HOST:]PORT to receive spans from a server")

    from tracer import tui
    from tracer.replay.workload import looks_like_workload

    paths = args.traces
    workload = next((path for path in paths if looks_like_workload(path)), None)
    if workload is not None:
        raise ValueError(f"{workload} is a workload, not a trace: run `servetrace replay {workload}` on it")
    if args.summary or not (sys.stdin.isatty() and sys.stdout.isatty()):
        tui.print_summary(paths)
        return 0
    return tui.run_explorer(paths)


def listen(args: argparse.Namespace) -> int:
    from tracer.commands._ports import listen as bind
    from tracer.traces.receiver import parse_listen, start_receiver

    if args.traces:
        raise ValueError("--listen receives spans: give no trace file with it (use --save to keep them)")
    host, port = parse_listen(args.listen)
    listener = bind(host, port, "--listen")  # a busy port fails here, naming it (exit status 2)
    receiver = start_receiver(listener, args.save)

    from tracer.tui.live import DEFAULT_WINDOW, LiveWindow

    window = LiveWindow(args.window if args.window is not None else DEFAULT_WINDOW, label=f"{host}:{port}")
    if args.summary or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return _listen_headless(receiver, window, args.save)
    from tracer.tui.live import LiveExplorerApp

    try:
        LiveExplorerApp(receiver, window).run()
    finally:
        receiver.stop()
    if args.save:
        print(f"kept {window.stats.spans_received:,} spans in {args.save}")
    return 0


def _listen_headless(receiver, window, save: str | None) -> int:
    """No terminal: receive until SIGINT / SIGTERM, then print what the explorer would show."""
    from rich.console import Console

    from tracer.tui.live import LiveFeed
    from tracer.tui.summary import requests_table

    console = Console(stderr=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    feed = LiveFeed(receiver, window, lambda model: None, rebuild_s=5.0)
    feed.start()
    host, port = receiver.address
    console.print(f"servetrace: listening for OTLP/HTTP on http://{host}:{port}/v1/traces"
                  + (f", keeping spans in {save}" if save else "") + "; Ctrl-C stops")
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    feed.stop()
    Console().print(requests_table(window.build()))
    console.print(window.notice())
    return 0
