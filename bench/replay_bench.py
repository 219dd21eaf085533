"""Replay diff cost: a 1,000-request replay through our scheduler and vLLM 0.33's, compared.

Both engines replay the same ShareGPT-like workload (`servetrace workload gen sharegpt -n 1000`:
seeded lognormal lengths, Poisson arrivals, tracer/replay/workload.py) under the config
`servetrace replay` uses by default, with forced outputs in place of a model and no tracing
hooks. Three things are measured, each apart from the others:
- importing vLLM's scheduler stack and building its first Scheduler (seconds and memory, once
  per process; reported separately because the diff cannot avoid it and does not control it);
- the diff: drive both engines and compare their logs, as `servetrace replay --no-trace` does
  minus writing the step files: wall time (best of --repeats, engines interleaved) and the memory
  it adds above the process after the imports (peak RSS growth, and tracemalloc's peak of Python
  allocations in one extra run, since tracing allocations slows the run down);
- per-step scheduling cost: Scheduler.schedule() + update_from_output() only, ours vs vLLM.
The replays must agree on every step, or the two engines did different work.

    .venv/bin/python bench/replay_bench.py
Results: bench/results/replay.json and replay.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console  # noqa: E402

from bench._results import run_meta, write_results  # noqa: E402
from tracer.replay.compare import compare_logs  # noqa: E402
from tracer.replay.config import ReplayConfig  # noqa: E402
from tracer.replay.runners import drive, make_scheduler_runner  # noqa: E402
from tracer.replay.workload import sharegpt_like  # noqa: E402

ENGINES = ("mini", "vllm")
LABELS = {"mini": "ours", "vllm": "vLLM 0.33"}
MIB = 1024 * 1024


def rss_bytes(field: str = "VmRSS") -> int:
    """The process's resident set (VmRSS) or its peak so far (VmHWM), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scheduling_cost(log) -> dict:
    per_step = [s.schedule_seconds + s.update_seconds for s in log.steps]
    return {
        "steps": len(log.steps),
        "schedule_s": log.schedule_seconds,
        "update_s": log.update_seconds,
        "total_s": log.schedule_seconds + log.update_seconds,
        "per_step_mean_us": 1e6 * statistics.fmean(per_step),
        "per_step_p50_us": 1e6 * percentile(per_step, 0.5),
        "per_step_p99_us": 1e6 * percentile(per_step, 0.99),
    }


def one_diff(workload, config: ReplayConfig, order: tuple[str, ...]):
    """Drive both engines and compare: the work of `servetrace replay --no-trace` before it writes."""
    started = time.perf_counter()
    logs = {engine: drive(make_scheduler_runner(engine, config), workload) for engine in order}
    comparison = compare_logs(logs["mini"], logs["vllm"])
    return time.perf_counter() - started, logs, comparison


def measure_import(config: ReplayConfig) -> dict:
    rss_before = rss_bytes()
    started = time.perf_counter()
    make_scheduler_runner("vllm", config)  # imports vLLM's scheduler stack, builds one Scheduler
    return {"seconds": time.perf_counter() - started, "rss_growth_mib": (rss_bytes() - rss_before) / MIB,
            "rss_after_mib": rss_bytes() / MIB}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = ReplayConfig()
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--requests-per-step", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-blocks", type=int, default=defaults.num_blocks)
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--max-num-batched-tokens", type=int, default=defaults.max_num_batched_tokens)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = parser.parse_args(argv)
    if args.num_requests < 1 or args.repeats < 1:
        parser.error("--num-requests and --repeats must be at least 1")

    config = ReplayConfig(block_size=args.block_size, num_blocks=args.num_blocks, max_num_seqs=args.max_num_seqs,
                          max_num_batched_tokens=args.max_num_batched_tokens)
    workload = sharegpt_like(num_requests=args.num_requests, requests_per_step=args.requests_per_step, seed=args.seed)
    console = Console()
    console.print(f"workload: {len(workload)} ShareGPT-like requests, "
                  f"{sum(len(r.prompt_token_ids) for r in workload)} prompt + {sum(r.max_tokens for r in workload)} output tokens")
    imported = measure_import(config)
    console.print(f"vLLM import + first Scheduler: {imported['seconds']:.2f} s, +{imported['rss_growth_mib']:.0f} MiB RSS")

    # The diff, timed; the memory baseline is the process right after the imports.
    baseline_rss = rss_bytes()
    walls, schedulers, best, logs, agree = [], [], {}, {}, True
    for repeat in range(args.repeats):
        order = ENGINES if repeat % 2 == 0 else ENGINES[::-1]
        wall, run_logs, comparison = one_diff(workload, config, order)
        walls.append(wall)
        schedulers.append(sum(log.schedule_seconds + log.update_seconds for log in run_logs.values()))
        agree = agree and comparison.agree
        console.print(f"  repeat {repeat + 1}: diff {wall:.2f} s ({comparison.left_steps} steps, agree {comparison.agree})")
        for engine, log in run_logs.items():
            cost = scheduling_cost(log)
            if engine not in best or cost["total_s"] < best[engine]["total_s"]:
                best[engine], logs[engine] = cost, log
        del run_logs, comparison
    peak_rss_growth = (rss_bytes("VmHWM") - baseline_rss) / MIB

    # What `servetrace replay --no-trace` adds to the diff: writing both step logs.
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        sizes = [logs[engine].write(Path(directory) / f"steps-{engine}.json").stat().st_size for engine in ENGINES]
        write_seconds = time.perf_counter() - started

    tracemalloc.start()
    traced_wall, _, _ = one_diff(workload, config, ENGINES)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    fastest = walls.index(min(walls))
    wall, scheduling = walls[fastest], schedulers[fastest]  # the breakdown of the fastest repeat
    ratio = best["mini"]["per_step_mean_us"] / best["vllm"]["per_step_mean_us"]
    preemptions = sum(len(s.preempted) for s in logs["vllm"].steps)
    cached = sum(a.cached_tokens for s in logs["vllm"].steps for a in s.admitted)
    diff = {
        "wall_s_best": wall, "wall_s_all": walls, "scheduling_s_best": scheduling,
        "driver_and_compare_s": wall - scheduling,
        "peak_rss_growth_mib": peak_rss_growth, "tracemalloc_peak_mib": traced_peak / MIB,
        "tracemalloc_run_wall_s": traced_wall,
        "rss_after_imports_mib": baseline_rss / MIB,
        "write_step_logs_s": write_seconds, "step_log_mib": sum(sizes) / MIB,
        "targets": {"wall_s": 10, "memory_mib": 500},
    }
    console.print(f"diff: best {wall:.2f} s (schedulers {scheduling:.2f} s of it); peak RSS +{peak_rss_growth:.0f} MiB "
                  f"over the imported process, tracemalloc peak {traced_peak / MIB:.0f} MiB; agree on every step: {agree}")
    console.print(f"ratio ours / vLLM (mean per step): {ratio:.2f}; {preemptions} preemptions, {cached} prefix-hit tokens")

    if not args.no_write:
        meta = run_meta(config=config.to_json(), repeats=args.repeats)
        payload = {
            "workload": {"kind": "sharegpt-like (seeded lognormal lengths, Poisson arrivals)",
                         "num_requests": len(workload), "requests_per_step": args.requests_per_step, "seed": args.seed},
            "vllm_import": imported, "diff": diff, "engines": best,
            "ratio_mini_over_vllm_per_step": ratio, "replays_agree": agree,
            "preemptions": preemptions, "prefix_hit_tokens": cached,
        }
        write_results("replay", "Replay benchmark: a 1,000-request diff, ours vs vLLM 0.33", meta, payload,
                      markdown_body(len(workload), config, args.repeats, imported, diff, best, ratio, agree, preemptions, cached))
        console.print("wrote bench/results/replay.json and replay.md")
    return 0 if agree else 1


def markdown_body(num_requests: int, config: ReplayConfig, repeats: int, imported: dict, diff: dict, best: dict,
                  ratio: float, agree: bool, preemptions: int, cached: int) -> list[str]:
    lines = [
        f"Workload: {num_requests} ShareGPT-like requests (`servetrace workload gen sharegpt -n {num_requests}`; seeded "
        f"lognormal lengths, not fitted to ShareGPT), `servetrace replay`'s default config "
        f"(block_size {config.block_size}, num_blocks {config.num_blocks}, max_num_seqs {config.max_num_seqs}, "
        f"max_num_batched_tokens {config.max_num_batched_tokens}). No tracing hooks; best of {repeats} interleaved runs.",
        "",
        "| measured | value | target |",
        "|---|---:|---:|",
        f"| the diff: drive both engines + compare, wall | {diff['wall_s_best']:.2f} s | < 10 s |",
        f"| of which the two schedulers (schedule + update_from_output) | {diff['scheduling_s_best']:.2f} s | |",
        f"| of which the driver's recording and compare | {diff['driver_and_compare_s']:.2f} s | |",
        f"| peak RSS growth above the process after the imports | {diff['peak_rss_growth_mib']:.0f} MiB | < 500 MB |",
        f"| tracemalloc peak of the diff (Python allocations, one run) | {diff['tracemalloc_peak_mib']:.0f} MiB | |",
        f"| writing both step logs (`servetrace replay --no-trace` adds it) | {diff['write_step_logs_s']:.2f} s, "
        f"{diff['step_log_mib']:.0f} MiB | |",
        f"| importing vLLM's scheduler + its first Scheduler (apart) | {imported['seconds']:.2f} s, "
        f"+{imported['rss_growth_mib']:.0f} MiB RSS | |",
        f"| the process's RSS after the imports (the baseline above) | {diff['rss_after_imports_mib']:.0f} MiB | |",
        "",
        "Per-step scheduling cost (Scheduler.schedule() + update_from_output() only):",
        "",
        "| engine | steps | schedule s | update s | mean us/step | p50 us | p99 us |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for engine in ENGINES:
        b = best[engine]
        lines.append(f"| {LABELS[engine]} | {b['steps']} | {b['schedule_s']:.3f} | {b['update_s']:.3f} | "
                     f"{b['per_step_mean_us']:.1f} | {b['per_step_p50_us']:.1f} | {b['per_step_p99_us']:.1f} |")
    lines += ["", f"Ratio ours / vLLM (mean per step): **{ratio:.2f}**. Replays agree on every step: {agree} "
              f"({preemptions} preemptions, {cached} prefix-hit tokens). The machine is shared: the load average "
              "above says how busy it was."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
