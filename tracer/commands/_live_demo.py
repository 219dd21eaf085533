"""`servetrace demo --engine vllm|sglang`: the main job on a live upstream server.

1. start the engine's server on 127.0.0.1 from the venv `make setup` built (.venv-vllm /
   .venv-sglang), with SERVETRACE_TRACE set, so servetrace's plugin traces every process;
2. send a few chats with the openai client (tracer.live.chat_demo), two sharing a long prefix;
3. stop the server (SIGTERM to its process group: each process flushes its spans on the way out);
4. open the explorer on the trace, or print its summary without a terminal.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from tracer.live.process import ServerError, ServerProcess

# What a user waits for, measured on this 2-core CPU (tracer/live/*.py docstrings): printed
# before the wait so a silent minute does not look like a hang.
STARTUP_HINT = {
    "vllm": "starting vLLM's CPU server (about 30-60 s)...",
    "sglang": "starting SGLang's CPU server (about 20-40 s)...",
}
PROGRESS_EVERY_S = 10.0


def run_live_demo(args: argparse.Namespace, console: Console) -> int:
    from tracer.replay.output_dir import OutputDir

    engine = args.engine
    if args.trace:
        trace_path = claim_trace_file(args.trace)
    else:
        trace_path = OutputDir(args.out, "demo", force=args.force).claim(f"trace-{engine}.jsonl")
    trace_path = trace_path.resolve()  # the server's processes run in the checkout, not here
    try:
        server = _server(engine, trace_path)
    except ServerError as exc:  # a missing venv or model: says `make setup`
        console.print(f"[red]servetrace demo --engine {engine}: {exc}[/]")
        return 1

    console.rule(f"[bold]1. a live {engine} server, traced by servetrace's plugin")
    console.print(STARTUP_HINT[engine])
    console.print(f"[dim]log: {server.spec.log_path}[/]")
    try:
        run = _serve_chats(server, args.max_tokens, console)
    except ServerError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        console.print("stopping the server (each process writes its last spans)...")
        server.stop()
    console.print(f"[dim]trace: {trace_path}[/]")
    cached = _cached_tokens(trace_path, run.by_label("prefix-2").request_id)
    console.print(
        f"shared prefix: the second of the two chats with the same system prompt found {cached} prompt "
        f"tokens in the prefix cache (of {run.by_label('prefix-2').prompt_tokens})", soft_wrap=True,
    )

    from tracer import tui

    console.rule("[bold]3. the trace explorer")
    if not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty():
        status = tui.run_explorer([str(trace_path)])
        console.print(f"reopen the explorer:  servetrace tui {trace_path}", soft_wrap=True)
        return status
    tui.print_summary([str(trace_path)], console=console)
    console.print(f"\nexplore it yourself:  servetrace tui {trace_path}", soft_wrap=True)  # one line to copy
    return 0


def claim_trace_file(name: str) -> Path:
    """--trace FILE: the demo owns it, so a rerun replaces it (the exporters append: a kept file
    would hold both runs)."""
    path = Path(name)
    if path.is_dir():
        raise ValueError(f"--trace {name} is a folder; give a file name, e.g. {path / 'trace.jsonl'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


def _server(engine: str, trace_path: Path) -> ServerProcess:
    if engine == "vllm":
        from tracer.live.vllm import VllmOptions, vllm_server

        return vllm_server(VllmOptions(trace_file=trace_path))
    from tracer.live.sglang import SglangOptions, sglang_server

    return sglang_server(SglangOptions(trace_file=trace_path))


def _serve_chats(server: ServerProcess, max_tokens: int, console: Console):
    from tracer.live.chat_demo import send_demo_chats

    last = [0.0]

    def progress(waited: float) -> None:
        if waited - last[0] >= PROGRESS_EVERY_S:
            last[0] = waited
            console.print(f"  still starting... {waited:.0f} s")

    server.start()
    ready_s = server.wait_ready(on_wait=progress)
    console.print(f"ready after {ready_s:.0f} s at {server.base_url}")
    console.rule("[bold]2. chat requests over HTTP (openai client)")
    run = send_demo_chats(server.base_url, max_tokens, lambda text: console.print(text, end="", highlight=False))
    for request in run.requests:
        console.print(f"[dim]{request.request_id}: {request.prompt_tokens} prompt + "
                      f"{request.completion_tokens} completion tokens[/]")
    return run


def _cached_tokens(trace_path: Path, request_id: str) -> int:
    """The most prompt tokens any span of that request's trace found cached (its prefix lookup)."""
    from tracer.traces import schema
    from tracer.traces.trace_file import read_trace_file

    spans = read_trace_file(trace_path).spans
    trace_ids = {s.trace_id for s in spans if s.attributes.get(schema.HTTP_REQUEST_ID_HEADER) == request_id}
    return max((int(s.attributes.get(schema.CACHED_TOKENS, 0)) for s in spans if s.trace_id in trace_ids), default=0)
