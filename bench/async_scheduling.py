"""Async scheduling on vs off: inter-token latency and throughput of our engine on this CPU.

The same workload (greedy, the bundled SmolLM2-135M in float32, every request producing exactly its
max_tokens) runs through two engines in one process, one synchronous and one with async
scheduling (AsyncScheduler + the batch queue, engine/batch_queue.py), in alternating pairs so that
a noisy shared machine loads both alike. Per run: output tokens per second, and ITL (the gap
between a request's consecutive tokens as the engine hands them out) p50 / p90 over all requests.
Also the time per synchronous step by phase, of which async scheduling can hide the host phases
(schedule, input preparation, update + detokenize), and each run's forward p50 (the model's own
cost, which async scheduling leaves alone: a check that a tok/s difference is not the machine's
noise). Prints a table and writes bench/results/async_scheduling.{json,md}.

    .venv/bin/python bench/async_scheduling.py [--pairs 5] [--batch 8] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.omp_env import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # before torch loads

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from _results import run_meta, write_results  # noqa: E402
from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from tracer.labs.async_lab import step_phase_times, timed_run  # noqa: E402

TOPICS = ["a lighthouse", "the moon", "bread", "rivers", "a violin", "winter", "trains", "bees", "glass", "maps"]


def make_engine(async_scheduling: bool, batch: int) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=ModelConfig(dtype="float32"),  # as the recorded results ran (the CPU default may be bfloat16)
            cache=CacheConfig(num_blocks=512),
            scheduler=SchedulerConfig(max_num_seqs=batch, max_model_len=1024, async_scheduling=async_scheduling),
        )
    )


def run(engine: LLMEngine, token_ids: list[list[int]], max_tokens: int) -> dict:
    """All requests at once (the lab's timed_run); each forward's time too, a check that a difference
    in tok/s is not the machine's noise."""
    run = timed_run(engine, token_ids, max_tokens)
    assert run.tokens == max_tokens * len(token_ids)
    gaps = run.gaps
    quantiles = statistics.quantiles(gaps, n=10)
    return {
        "seconds": run.seconds,
        "tok_per_s": run.tokens / run.seconds,
        "itl_p50_ms": statistics.median(gaps) * 1e3,
        "itl_p90_ms": quantiles[8] * 1e3,
        "forward_p50_ms": statistics.median(run.forwards) if run.forwards else None,
    }


def host_time_per_step(engine: LLMEngine, token_ids: list[list[int]], max_tokens: int) -> dict:
    """What async scheduling can overlap with the forward: the synchronous step's host phases (mean ms)."""
    return {name: statistics.fmean(ms) for name, ms in step_phase_times(engine, token_ids, max_tokens).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="alternating off/on pairs (default 5)")
    parser.add_argument("--batch", type=int, default=8, help="requests at once, max_num_seqs (default 8)")
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens per request (default 32)")
    args = parser.parse_args()
    load_at_start = tuple(round(x, 2) for x in os.getloadavg())
    if args.pairs < 1 or args.batch < 1 or args.max_tokens < 2:
        parser.error("--pairs and --batch must be at least 1, --max-tokens at least 2")
    console = Console(stderr=True)
    console.print(f"loading two engines (batch {args.batch}, {args.max_tokens} tokens each, {args.pairs} pairs)...")
    engines = {False: make_engine(False, args.batch), True: make_engine(True, args.batch)}
    token_ids = [
        engines[False].render(f"Write a short story about {TOPICS[i % len(TOPICS)]}." + " Make it vivid." * (i % 4))
        for i in range(args.batch)
    ]
    for on in (False, True):  # warm both (oneDNN primitives, allocator)
        run(engines[on], token_ids, 4)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for pair in range(args.pairs):
        # Alternate which goes first, so neither always runs on the warmer machine.
        for on in ((False, True) if pair % 2 == 0 else (True, False)):
            result = run(engines[on], token_ids, args.max_tokens)
            runs["on" if on else "off"].append(result)
            console.print(f"pair {pair + 1}/{args.pairs} async {'on ' if on else 'off'}: {result['tok_per_s']:.1f} tok/s, "
                          f"ITL p50 {result['itl_p50_ms']:.1f} ms")
    host = host_time_per_step(engines[False], token_ids, args.max_tokens)
    hideable = sum(ms for name, ms in host.items() if name != "forward + sample")

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    ratios = [on["tok_per_s"] / off["tok_per_s"] for off, on in zip(runs["off"], runs["on"])]
    summary = {
        mode: {key: median(mode, key) for key in ("tok_per_s", "itl_p50_ms", "itl_p90_ms", "forward_p50_ms")} for mode in ("off", "on")
    }
    summary["throughput_ratio_on_over_off_per_pair"] = ratios
    summary["throughput_ratio_median"] = statistics.median(ratios)
    meta = run_meta(pairs=args.pairs, batch=args.batch, max_tokens=args.max_tokens, load_average_at_start=load_at_start)

    table = Table(title=f"async scheduling, batch {args.batch}, {args.max_tokens} tokens each (median of {args.pairs} pairs)")
    for column in ("async scheduling", "tok/s", "ITL p50 ms", "ITL p90 ms", "forward p50 ms"):
        table.add_column(column, justify="right")
    for mode in ("off", "on"):
        s = summary[mode]
        table.add_row(mode, f"{s['tok_per_s']:.1f}", f"{s['itl_p50_ms']:.1f}", f"{s['itl_p90_ms']:.1f}", f"{s['forward_p50_ms']:.1f}")
    Console().print(table)
    body = [
        f"Batch {args.batch} (all requests at once), {args.max_tokens} output tokens each, greedy, float32, "
        f"{args.pairs} alternating pairs in one process; medians. Load average at start {load_at_start}.",
        "",
        "| async scheduling | tok/s | ITL p50 ms | ITL p90 ms | forward p50 ms |",
        "|---|---|---|---|---|",
    ]
    for mode in ("off", "on"):
        s = summary[mode]
        body.append(f"| {mode} | {s['tok_per_s']:.1f} | {s['itl_p50_ms']:.1f} | {s['itl_p90_ms']:.1f} | {s['forward_p50_ms']:.1f} |")
    body += [
        "",
        "Throughput on / off per pair (each pair's two runs back to back; the spread is the shared machine's): " + ", ".join(f"{r:.3f}" for r in ratios) + f" (median {statistics.median(ratios):.3f}).",
        "",
        "Time per synchronous step by phase, ms: " + ", ".join(f"{name} {ms:.2f}" for name, ms in host.items())
        + f". Async scheduling can hide at most the host phases (all but forward + sample): "
        f"{hideable:.2f} ms, {hideable / sum(host.values()):.1%} of the step.",
    ]
    write_results("async_scheduling", "Async scheduling on vs off (our engine, CPU)", meta,
                  {"runs": runs, "summary": summary, "host_ms_per_step": host, "hideable_ms_per_step": hideable}, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
