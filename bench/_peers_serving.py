"""The peers bench's serving part: one live server at a time (ours, vLLM's CPU build, SGLang's CPU
server), each started under /tmp/servetrace-live.lock, measured by bench/serve_bench.py's own client
(one_request: streaming /v1/completions, greedy, ignore_eos; summarize: TTFT / TPOT / ITL) with
token-id prompts, so every server gets the same ids, then stopped.

Every level uses prompts no earlier level of that server used (the servers keep prefix caching on,
as they start by default; a repeated prompt would be a cache hit).
"""
from __future__ import annotations

import asyncio
import sys
import time

import aiohttp

from _peers_lock import live_lock
from _server_meter import foreign_servers
from serve_bench import one_request, served_model, summarize
from tracer.live.process import TRACING_ENV, ServerProcess, ServerSpec, free_port, project_root
from tracer.live.sglang import SglangOptions, sglang_spec
from tracer.live.vllm import VllmOptions, vllm_spec

LOGS = project_root() / ".cache" / "peers"


def ours_spec(threads: int, engine_args: list[str]) -> ServerSpec:
    """`servetrace serve` with `threads` torch threads (OMP_NUM_THREADS sets torch's default)."""
    port = free_port()
    argv = [sys.executable, "-m", "tracer.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--max-queue", "256", *engine_args]
    return ServerSpec(name="ours", argv=argv, host="127.0.0.1", port=port, log_path=LOGS / f"ours-{port}.log",
                      env={"OMP_NUM_THREADS": str(threads)}, unset_env=TRACING_ENV, cwd=project_root(),
                      ready_path="/v1/models", startup_timeout_s=300)


def vllm_server_spec(dtype: str, reserved_cpus: int | None, max_num_seqs: int) -> ServerSpec:
    """tracer/live/vllm.py's server as the live tests start it, without their small-KV flags
    (no --num-gpu-blocks-override; VLLM_CPU_KVCACHE_SPACE 1 GiB, the launcher's default)."""
    env = {} if reserved_cpus is None else {"VLLM_CPU_NUM_OF_RESERVED_CPU": str(reserved_cpus)}
    options = VllmOptions(dtype=dtype, max_num_seqs=max_num_seqs, env=env)
    spec = vllm_spec(options)
    return _relog(spec, f"vllm-{dtype}-{spec.port}.log")


def sglang_server_spec(dtype: str, max_running_requests: int) -> ServerSpec:
    """tracer/live/sglang.py's server as the live tests start it, with a KV pool (in tokens) that
    holds every request of the largest level at once instead of the tests' small one."""
    options = SglangOptions(dtype=dtype, max_total_tokens=32768, max_running_requests=max_running_requests)
    spec = sglang_spec(options)
    return _relog(spec, f"sglang-{dtype}-{spec.port}.log")


def _relog(spec: ServerSpec, name: str) -> ServerSpec:
    from dataclasses import replace

    return replace(spec, log_path=LOGS / name)


async def run_level(url: str, model: str, concurrency: int, prompts: list[list[int]], output_len: int) -> dict:
    """serve_bench.run_level with token-id prompts: len(prompts) requests, at most `concurrency` in flight."""
    semaphore = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def limited(ids: list[int]):
            async with semaphore:
                return await one_request(session, url, model, ids, output_len)  # a list of ids is a valid prompt

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(ids) for ids in prompts))
        duration = time.perf_counter() - start
    return summarize(concurrency, results, duration)


def measure_server(spec: ServerSpec, levels: dict[int, list[list[int]]], warmup: list[int], output_len: int,
                   say) -> dict:
    """Start one server (holding the live lock), run each level once, stop it."""
    with live_lock(say):
        foreign = foreign_servers()
        started = time.monotonic()
        with ServerProcess(spec) as server:
            ready_s = time.monotonic() - started
            url = server.base_url + "/v1"
            model = asyncio.run(served_model(url))
            asyncio.run(run_level(url, model, 1, [warmup], output_len))  # first-call costs out of the levels
            out = {}
            for concurrency, prompts in levels.items():
                level = asyncio.run(run_level(url, model, concurrency, prompts, output_len))
                say(f"    {spec.name} c={concurrency}: ITL p50 {level['itl_ms']['p50']:.1f} ms, "
                    f"TTFT p50 {level['ttft_ms']['p50']:.0f} ms, {level['output_throughput']:.1f} out tok/s"
                    + (f", {level['failed']} FAILED: {level['errors']}" if level["failed"] else ""))
                out[str(concurrency)] = level
    return {"ready_s": round(ready_s, 1), "foreign_servers_at_start": foreign, "log": str(spec.log_path),
            "levels": out}


def level_prompts(serving_ids: list[list[int]], concurrencies: list[int], per_level: dict[int, int]) -> tuple[list[int], dict[int, list[list[int]]]]:
    """The warm-up prompt and, per level, its own prompts (none shared between levels)."""
    need = 1 + sum(per_level[c] for c in concurrencies)
    if need > len(serving_ids):
        raise ValueError(f"the serving levels need {need} distinct prompts, the workload file has {len(serving_ids)}")
    warmup, rest = serving_ids[0], serving_ids[1:]
    levels = {}
    for c in concurrencies:
        levels[c], rest = rest[:per_level[c]], rest[per_level[c]:]
    return warmup, levels

