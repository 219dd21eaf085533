"""Serving benchmark: streaming clients against an OpenAI-compatible server, at a few concurrencies.

Mirrors vllm.benchmarks.serve (`vllm bench serve` with --max-concurrency and an unbounded
request rate): each level runs a closed loop of N streaming /v1/completions requests with at
most C in flight, and reports

  TTFT  time to first token (request sent -> first text chunk)
  TPOT  time per output token after the first: (latency - TTFT) / (output tokens - 1)
  ITL   inter-token latency: gaps between successive text chunks
  throughput: requests/s, output tokens/s, total (prompt + output) tokens/s

with p50/p90/p99 for the latencies. Without --url it starts `servetrace serve` itself on a
free port (engine options after `--`). Results: bench/results/serve.json and serve.md.

    .venv/bin/python bench/serve_bench.py --concurrency 1 4 16 --num-prompts 32 --output-len 32
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
WORDS = (
    "the model reads a request and writes an answer one token at a time while the scheduler "
    "batches many requests together under a token budget and the cache keeps their keys and values"
).split()


@dataclass
class RequestResult:
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


def make_prompt(index: int, input_words: int) -> str:
    # A distinct opening per request, so prefix caching does not turn the benchmark into cache hits.
    words = [WORDS[(index * 7 + i) % len(WORDS)] for i in range(input_words)]
    return f"Request {index}: " + " ".join(words)


async def one_request(session: aiohttp.ClientSession, url: str, model: str, prompt: str, output_len: int) -> RequestResult:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "temperature": 0,
        "ignore_eos": True,  # every request produces exactly output_len tokens
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = RequestResult(ok=False)
    start = time.perf_counter()
    last = None
    try:
        async with session.post(f"{url}/completions", json=body) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return result
            buffer = b""
            async for data in response.content.iter_any():
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue
                    payload = event[len(b"data: "):]
                    if payload == b"[DONE]":
                        result.ok = result.output_tokens > 0
                        result.latency = time.perf_counter() - start
                        return result
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        result.error = chunk["error"]["message"]
                        return result
                    now = time.perf_counter()
                    if any(choice.get("text") for choice in chunk.get("choices", [])):
                        if last is None:
                            result.ttft = now - start
                        else:
                            result.itl.append(now - last)
                        last = now
                    if chunk.get("usage"):
                        result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                        result.output_tokens = chunk["usage"]["completion_tokens"]
        result.error = "the stream ended without [DONE]"
    except aiohttp.ClientError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def run_level(url: str, model: str, concurrency: int, num_prompts: int, input_words: int, output_len: int, offset: int) -> dict:
    semaphore = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def limited(index: int) -> RequestResult:
            async with semaphore:
                return await one_request(session, url, model, make_prompt(offset + index, input_words), output_len)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(i) for i in range(num_prompts)))
        duration = time.perf_counter() - start
    return summarize(concurrency, results, duration)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    ordered = sorted(values)

    def pick(q: float) -> float:
        # Linear interpolation between closest ranks (numpy's default).
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {"mean": statistics.fmean(ordered) * 1000, **{f"p{int(q * 100)}": pick(q) * 1000 for q in (0.5, 0.9, 0.99)}}


def summarize(concurrency: int, results: list[RequestResult], duration: float) -> dict:
    done = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in done)
    prompt_tokens = sum(r.prompt_tokens for r in done)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration,
        "mean_prompt_tokens": prompt_tokens / len(done) if done else 0,
        "mean_output_tokens": output_tokens / len(done) if done else 0,
        "request_throughput": len(done) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (prompt_tokens + output_tokens) / duration,
        "ttft_ms": percentiles([r.ttft for r in done]),
        "tpot_ms": percentiles(tpot),
        "itl_ms": percentiles([gap for r in done for gap in r.itl]),
    }


def build_offline_engine(engine_args: list[str]):
    """The engine `servetrace serve` would build from these options, in this process."""
    from engine.llm_engine import LLMEngine
    from engine.omp_env import on_passing_thread
    from engine.sampling_params import SamplingParams
    from tracer.commands._engine_options import add_engine_options, engine_config_from_args

    option_parser = argparse.ArgumentParser()
    add_engine_options(option_parser)
    engine = LLMEngine(engine_config_from_args(option_parser.parse_args(engine_args)))
    # Warm-up, as for the server; on a passing thread, so the OpenMP pool it starts does not outlive
    # it beside the stepping thread's (engine.omp_env.on_passing_thread says what a second pool costs).
    on_passing_thread(lambda: engine.generate([make_prompt(10_000, 8)], SamplingParams(max_tokens=2)))
    return engine


def offline_level(engine, concurrency: int, num_prompts: int, input_words: int, output_len: int, offset: int) -> float:
    """The same workload through LLMEngine in-process (no HTTP, no async front end): output tokens/s.

    The server/offline ratio is what the HTTP layer, the async front end and SSE cost. The
    threads are arranged as in the server: the engine is built in the main thread and stepped
    in another. On an oversubscribed CPU that arrangement matters more than anything measured
    here (OpenMP busy-waiting; measured on the 2-core dev machine: the same batch took 39 s
    stepped in the thread that built the engine, 3.7 s in a second thread).
    """
    from engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    result: list[float] = []

    def run() -> None:
        pending = [engine.render(make_prompt(offset + j, input_words)) for j in range(num_prompts)]
        in_flight = output_tokens = 0
        start = time.perf_counter()
        while pending or engine.has_unfinished_requests():
            while pending and in_flight < concurrency:
                engine.add_request(None, pending.pop(0), params)
                in_flight += 1
            for out in engine.step():
                if out.finished:
                    in_flight -= 1
                    output_tokens += len(out.output_token_ids)
        result.append(output_tokens / (time.perf_counter() - start))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return result[0]


def results_table(levels: list[dict]) -> Table:
    table = Table(title="servetrace serve: streaming /v1/completions")
    for column in ("conc", "done", "req/s", "out tok/s", "vs offline", "total tok/s", "TTFT p50/p90/p99 ms", "TPOT p50/p90/p99 ms", "ITL p50/p90/p99 ms"):
        table.add_column(column, justify="right")

    def triple(stats: dict) -> str:
        return f"{stats['p50']:.0f} / {stats['p90']:.0f} / {stats['p99']:.0f}"

    for level in levels:
        table.add_row(
            str(level["concurrency"]),
            f"{level['completed']}/{level['requests']}",
            f"{level['request_throughput']:.2f}",
            f"{level['output_throughput']:.1f}",
            _ratio(level),
            f"{level['total_token_throughput']:.1f}",
            triple(level["ttft_ms"]),
            triple(level["tpot_ms"]),
            triple(level["itl_ms"]),
        )
    return table


def _ratio(level: dict) -> str:
    offline = level.get("offline_output_throughput")
    return f"{level['output_throughput'] / offline:.2f}x" if offline else "-"


def markdown(levels: list[dict], command: str, meta: dict) -> str:
    lines = [
        "# Serving benchmark: our engine behind `servetrace serve`",
        "",
        f"Measured {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs), git {meta['git']}. Reproduce:",
        "",
        f"    {command}",
        "",
        f"Server: {meta['server']}",
        f"Each level: {meta['num_prompts']} streaming requests, ~{meta['input_words']} prompt words, "
        f"{meta['output_len']} output tokens (ignore_eos, greedy), at most `conc` in flight.",
        "",
        "`vs offline`: the server's output tokens/s over the same requests run through LLMEngine in the",
        "benchmark's own process (no HTTP, no async front end, no client), level by level in the same run.",
        "",
        f"The machine is shared: its load average when the run ended was {meta['load_average'][0]:.1f} "
        f"(1 min) / {meta['load_average'][2]:.1f} (15 min) on {meta['cpus']} CPUs, so absolute numbers swing between runs.",
        "",
        "| conc | done | req/s | out tok/s | vs offline | total tok/s | TTFT p50 / p90 / p99 ms | TPOT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        cells = [
            str(lv["concurrency"]), f"{lv['completed']}/{lv['requests']}", f"{lv['request_throughput']:.2f}",
            f"{lv['output_throughput']:.1f}", _ratio(lv), f"{lv['total_token_throughput']:.1f}",
            *(f"{lv[k]['p50']:.0f} / {lv[k]['p90']:.0f} / {lv[k]['p99']:.0f}" for k in ("ttft_ms", "tpot_ms", "itl_ms")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(engine_args: list[str], max_queue: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "tracer.cli", "serve", "--port", str(port), "--log-level", "warning",
               "--max-queue", str(max_queue), *engine_args]
    server = subprocess.Popen(command, cwd=REPO)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("the server did not start within 300 s")


async def served_model(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/models") as response:
        return (await response.json())["data"][0]["id"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="base URL of a running server, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--num-prompts", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--input-words", type=int, default=48)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--no-offline", action="store_true", help="skip the in-process LLMEngine baseline")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    parser.add_argument("engine_args", nargs=argparse.REMAINDER, help="after `--`: options for `servetrace serve`")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.num_prompts < 1 or args.output_len < 2 or args.input_words < 1:
        parser.error("concurrency, --num-prompts and --input-words must be >= 1, --output-len >= 2")
    engine_args = [a for a in args.engine_args if a != "--"]

    server = None
    url = args.url
    if url is None:
        server, url = start_server(engine_args, max_queue=max(args.concurrency))
    console = Console(width=None if sys.stdout.isatty() else 150)
    # Server and in-process engine take turns level by level, so drifting load on a shared
    # machine hits both sides of each ratio alike.
    offline_engine = build_offline_engine(engine_args) if args.url is None and not args.no_offline else None
    try:
        model = asyncio.run(served_model(url))
        # One warm-up request so the first level does not pay for first-call costs.
        asyncio.run(run_level(url, model, 1, 1, args.input_words, args.output_len, offset=10_000))
        levels = []
        for i, concurrency in enumerate(args.concurrency):
            offset = i * args.num_prompts
            console.print(f"concurrency {concurrency}: {args.num_prompts} requests...")
            level = asyncio.run(run_level(url, model, concurrency, args.num_prompts, args.input_words, args.output_len, offset))
            if offline_engine is not None:
                level["offline_output_throughput"] = offline_level(
                    offline_engine, concurrency, args.num_prompts, args.input_words, args.output_len, offset
                )
            levels.append(level)
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
    console.print(results_table(levels))

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/serve_bench.py", *(argv if argv is not None else sys.argv[1:])])
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.machine() + " " + platform.processor(),
        "cpus": os.cpu_count(),
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "server": url if args.url else "servetrace serve " + " ".join(engine_args or ["(defaults)"]),
        "model": model,
        "num_prompts": args.num_prompts,
        "input_words": args.input_words,
        "output_len": args.output_len,
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "meta": meta, "levels": levels}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(levels, command, meta))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0 if all(level["failed"] == 0 for level in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
