"""`servetrace demo`: the main job on the bundled model (what `make demo` runs).

1. start our engine behind its OpenAI-compatible server, traced, on 127.0.0.1;
2. send one chat request over HTTP with the official openai client, streaming the answer;
3. replay a small shared-prefix workload through our scheduler and vLLM's real one;
4. open the trace explorer on what was recorded (or print a Rich summary without a terminal).

With --engine vllm or sglang it runs the main job on a live server of that engine instead (the
launchers in tracer.live, from the venvs `make setup` builds): start it traced, send a few chats
(two sharing a long system prompt), stop it so every process writes its spans, open the explorer.
"""
from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

DEMO_MESSAGES = [{"role": "user", "content": "In two sentences, what does a KV cache store in a transformer?"}]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="trace a chat request over HTTP, replay against vLLM, open the explorer")
    parser.add_argument("--engine", choices=("mini", "vllm", "sglang"), default="mini",
                        help="mini: our engine, then a replay against vLLM (default); vllm / sglang: a live "
                             "server of that engine (built by `make setup`), traced by servetrace's plugin")
    parser.add_argument("--out", default="demo-out", help="where traces and replay logs go (default: demo-out/)")
    parser.add_argument("--trace", metavar="FILE",
                        help="write the HTTP / live-server trace here (replaced on each run; default: in --out)")
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--no-tui", action="store_true", help="print a summary instead of opening the explorer")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out that demo did not write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tracer.replay.output_dir import OutputDir

    console = Console(stderr=True)
    if args.engine != "mini":
        from tracer.commands._live_demo import run_live_demo

        return run_live_demo(args, console)
    # The demo owns --out: a second run replaces the first one's files (the exporters append,
    # so a kept file would double its spans) and leaves anything else there alone.
    owned = OutputDir(args.out, "demo", force=args.force)
    if args.trace:
        from tracer.commands._live_demo import claim_trace_file

        http_trace = claim_trace_file(args.trace)
    else:
        http_trace = owned.claim("trace-http.jsonl")
    replay_dir = owned.claim_dir("replay")

    console.rule("[bold]1-2. our engine over HTTP, traced")
    answer = serve_one_chat(http_trace, args.max_tokens, console)
    console.print(f"[dim]trace: {http_trace}[/]")

    console.rule("[bold]3. the same scheduler decisions as vLLM? (replay)")
    agree = replay_against_vllm(replay_dir, console, force=args.force)

    # The explorer opens on the chat; `x` switches trace, `c` compares the last two (ours vs vLLM).
    traces = [http_trace, replay_dir / "trace-mini.jsonl", replay_dir / "trace-vllm.jsonl"]
    console.rule("[bold]4. the trace explorer")
    if not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty():
        from tracer import tui

        status = tui.run_explorer([str(p) for p in traces])
        # soft_wrap: the command stays one line (the terminal wraps it), so it copies and pastes whole.
        console.print(f"reopen the explorer:  servetrace tui {' '.join(str(p) for p in traces)}", soft_wrap=True)
        return status if status else (0 if agree else 1)
    from tracer import tui

    tui.print_summary([str(p) for p in traces], console=console)
    console.print(f"\nanswer: {answer.strip()}")
    console.print(f"\nexplore it yourself:  servetrace tui {' '.join(str(p) for p in traces)}", soft_wrap=True)
    return 0 if agree else 1


def serve_one_chat(trace_path: Path, max_tokens: int, console: Console) -> str:
    import openai
    import uvicorn

    from engine.config import CacheConfig, EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.server import build_app
    from tracer.instrument import tracing

    tracing.enable("mini", trace_file=trace_path)
    try:
        console.print("loading the bundled SmolLM2-135M-Instruct...")
        engine = LLMEngine(EngineConfig(cache=CacheConfig(num_blocks=256)))
        app = build_app(engine, None, max_queue=16, shutdown_timeout=10.0)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="demo-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the demo server did not start")
            time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="demo")
        model = app.state.serving.served_model_name
        console.print(f"POST http://127.0.0.1:{port}/v1/chat/completions  model={model!r}  stream=true")
        console.print(f"[bold]user:[/] {DEMO_MESSAGES[0]['content']}")
        console.print("[bold]assistant:[/] ", end="")
        text = ""
        stream = client.chat.completions.create(
            model=model, messages=DEMO_MESSAGES, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            for choice in chunk.choices:
                piece = choice.delta.content or ""
                text += piece
                console.print(piece, end="", highlight=False)
            if chunk.usage:
                usage = chunk.usage
        console.print(f"\n[dim]{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens[/]")
        server.should_exit = True
        thread.join(timeout=30)
        return text
    finally:
        tracing.disable()


def replay_against_vllm(out_dir: Path, console: Console, force: bool = False) -> bool:
    from tracer.replay.config import ReplayConfig
    from tracer.replay.report import print_report
    from tracer.replay.session import run_replay
    from tracer.replay.workload import shared_prefix

    workload = shared_prefix(num_requests=12, num_system_prompts=2, system_len=48, seed=0)
    config = ReplayConfig(block_size=16, num_blocks=48, max_num_seqs=6, max_num_batched_tokens=96)
    console.print(
        f"{len(workload)} requests sharing 2 system prompts; {config.num_blocks} KV blocks of {config.block_size}, "
        f"budget {config.max_num_batched_tokens} tokens/step, max {config.max_num_seqs} running (vLLM: synchronous Scheduler)"
    )
    result = run_replay(workload, config, ["mini", "vllm"], out_dir=out_dir, force=force)
    print_report(result.comparisons, result.radix, console=console)
    return result.agree


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
