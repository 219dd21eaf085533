"""Scheduling cost per step: our scheduler vs vLLM 0.33's V1 Scheduler, on one replayed workload.

Both engines replay the same 1,000-request ShareGPT-like workload (seeded lognormal lengths,
Poisson arrivals; see tracer/replay/workload.py) under the same config, with forced outputs in
place of a model and no tracing hooks installed. Only Scheduler.schedule() and
Scheduler.update_from_output() are timed (the driver's bookkeeping around them is not). Each
engine runs --repeats times, interleaved, and the fastest total per engine is kept; the result
is the ratio ours / vLLM from this one run. The replays must also agree step for step, or the
two engines did different work and the ratio would mean nothing.

    .venv/bin/python bench/replay_bench.py
Results: bench/results/replay.json and replay.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tracer.replay.compare import compare_logs  # noqa: E402
from tracer.replay.config import ReplayConfig  # noqa: E402
from tracer.replay.runners import drive, make_scheduler_runner  # noqa: E402
from tracer.replay.workload import sharegpt_like  # noqa: E402

RESULTS = REPO / "bench" / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(log) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--requests-per-step", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-blocks", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = parser.parse_args(argv)
    if args.num_requests < 1 or args.repeats < 1:
        parser.error("--num-requests and --repeats must be at least 1")

    config = ReplayConfig(
        block_size=args.block_size, num_blocks=args.num_blocks, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=2048,
    )
    workload = sharegpt_like(num_requests=args.num_requests, requests_per_step=args.requests_per_step, seed=args.seed)
    console = Console()
    console.print(f"workload: {len(workload)} ShareGPT-like requests, "
                  f"{sum(len(r.prompt_token_ids) for r in workload)} prompt + {sum(r.max_tokens for r in workload)} output tokens")
    make_scheduler_runner("vllm", config)  # import vLLM before timing anything

    best: dict[str, dict] = {}
    logs = {}
    for repeat in range(args.repeats):
        for engine in ("mini", "vllm") if repeat % 2 == 0 else ("vllm", "mini"):
            log = drive(make_scheduler_runner(engine, config), workload)
            summary = summarize(log)
            console.print(f"  repeat {repeat + 1} {engine}: {summary['total_s']:.3f} s over {summary['steps']} steps")
            if engine not in best or summary["total_s"] < best[engine]["total_s"]:
                best[engine], logs[engine] = summary, log

    comparison = compare_logs(logs["mini"], logs["vllm"])
    ratio = best["mini"]["per_step_mean_us"] / best["vllm"]["per_step_mean_us"]
    preemptions = sum(len(s.preempted) for s in logs["vllm"].steps)
    cached = sum(a.cached_tokens for s in logs["vllm"].steps for a in s.admitted)

    table = Table(title=f"schedule() + update_from_output() per step ({len(workload)} requests, best of {args.repeats})")
    for column in ("engine", "steps", "schedule s", "update s", "mean us/step", "p50 us", "p99 us"):
        table.add_column(column, justify="right" if column != "engine" else "left")
    for engine, label in (("mini", "ours"), ("vllm", "vLLM 0.33")):
        b = best[engine]
        table.add_row(label, str(b["steps"]), f"{b['schedule_s']:.3f}", f"{b['update_s']:.3f}",
                      f"{b['per_step_mean_us']:.1f}", f"{b['per_step_p50_us']:.1f}", f"{b['per_step_p99_us']:.1f}")
    console.print(table)
    verdict = "ours no slower" if ratio <= 1.0 else "ours SLOWER"
    console.print(f"ratio ours / vLLM (mean per step): [bold]{ratio:.2f}[/bold] ({verdict}); "
                  f"replays agree on every step: {comparison.agree}; {preemptions} preemptions, {cached} prefix-hit tokens")

    if not args.no_write:
        command = "python bench/replay_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        result = {
            "command": command.strip(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "config": config.to_json(),
            "workload": {"kind": "sharegpt-like (seeded lognormal lengths, Poisson arrivals)", "num_requests": len(workload),
                         "requests_per_step": args.requests_per_step, "seed": args.seed},
            "repeats": args.repeats,
            "engines": best,
            "ratio_mini_over_vllm_per_step": ratio,
            "replays_agree": comparison.agree,
            "preemptions": preemptions,
            "prefix_hit_tokens": cached,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "replay.json").write_text(json.dumps(result, indent=1) + "\n")
        lines = [
            "# Replay benchmark: scheduling cost per step",
            "",
            f"Command: `{result['command']}`  ",
            f"Run: {result['when']} on {result['machine']}",
            "",
            f"Workload: {len(workload)} ShareGPT-like requests (seeded lognormal lengths, not fitted to ShareGPT), "
            f"config {json.dumps(config.to_json())}. Timed: Scheduler.schedule() + update_from_output() only; best of "
            f"{args.repeats} interleaved runs per engine; no tracing hooks.",
            "",
            "| engine | steps | schedule s | update s | mean us/step | p50 us | p99 us |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for engine, label in (("mini", "ours"), ("vllm", "vLLM 0.33")):
            b = best[engine]
            lines.append(f"| {label} | {b['steps']} | {b['schedule_s']:.3f} | {b['update_s']:.3f} | "
                         f"{b['per_step_mean_us']:.1f} | {b['per_step_p50_us']:.1f} | {b['per_step_p99_us']:.1f} |")
        lines += ["", f"Ratio ours / vLLM (mean per step): **{ratio:.2f}** ({verdict}). "
                  f"Replays agree on every step: {comparison.agree} ({preemptions} preemptions, {cached} prefix-hit tokens).", ""]
        (RESULTS / "replay.md").write_text("\n".join(lines))
        console.print(f"wrote {RESULTS / 'replay.json'} and {RESULTS / 'replay.md'}")
    return 0 if comparison.agree else 1


if __name__ == "__main__":
    sys.exit(main())
