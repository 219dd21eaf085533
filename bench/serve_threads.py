"""`servetrace serve` at 1 and 2 torch threads and under OpenMP wait settings, A/B in one run (issue 19's
serving rows at 2 threads): the peers bench's streaming client and workload (bench/_peers_serving.py), one
server at a time, the settings interleaved round by round (each round rotates their order), several passes
per level on fresh prompts; medians over all passes.

Per setting and level it reports the client's ITL / TPOT p50 and, from /proc, where the time went:
- per server thread (schedstat read around each pass): the engine thread's and the OpenMP worker's shares of
  the pass on a CPU and runnable-but-waiting on a run queue (preempted); the main (HTTP) thread's on-CPU share;
- the CPU the client (this process) used, and the rest of the machine's busy cores (other sessions' work) from
  /proc/stat, with the 1-minute load before each server.
With --trace, each server also writes a trace and the table adds the median engine.step span of the steps
that decode one token for every client (batch = clients), beside the client's ITL.

    .venv/bin/python bench/serve_threads.py [--rounds 3] [--passes 2] [--concurrency 4 16] [--trace]
        [--setting NAME=THREADS[:VAR=VALUE,...] ...]

Results: bench/results/serve_threads.{json,md} (with --trace: serve_threads_traced.*). Holds /tmp/servetrace-live.lock while a server runs.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results  # noqa: E402
from _peers_lock import live_lock  # noqa: E402
from _peers_serving import ours_spec, run_level  # noqa: E402
from _peers_workload import draw  # noqa: E402
from serve_bench import served_model  # noqa: E402
from serve_profile import thread_snapshot  # noqa: E402
from tracer.live.process import ServerProcess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / ".cache" / "serve_threads"
# name -> (threads, environment for the server). The wait policy is spelled out in each, so a setting
# means the same whatever `servetrace serve` defaults to. A spin round is one x86 `pause` (~26 ns here):
# 1000 rounds ~26 us, 10000 ~0.26 ms, 300000 (libgomp's count when no policy is set) ~7.8 ms.
DEFAULT_SETTINGS = {
    "1 thread": (1, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}),
    "2 threads, passive": (2, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}),
    "2 threads, spin 1000": (2, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}),
    "2 threads, spin 10000": (2, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}),
    "2 threads, spin 300000": (2, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"}),
}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def parse_setting(text: str) -> tuple[str, tuple[int, dict[str, str]]]:
    name, sep, rest = text.partition("=")
    threads, _, env_text = rest.partition(":")
    if not sep or not name or not threads.isdigit() or int(threads) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=THREADS[:VAR=VALUE,...], got {text!r}")
    env = {}
    for pair in filter(None, env_text.split(",")):
        var, eq, value = pair.partition("=")
        if not eq or not var:
            raise argparse.ArgumentTypeError(f"expected VAR=VALUE in {text!r}, got {pair!r}")
        env[var] = value
    return name, (int(threads), env)


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far (/proc/stat's cpu line; iowait counts as idle)."""
    fields = list(map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]))
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_cpu_s(pid: int) -> float:
    """User + system seconds of every thread of a process so far (/proc/<pid>/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def split_threads(pid: int, before: dict, after: dict, wall_s: float) -> dict:
    """Shares of the pass's wall time: the engine thread (the busiest one but main), the OpenMP worker (the
    next busiest: at 2 threads, the team's other member), main (the event loop), and the rest."""
    deltas = {tid: tuple(b - a for a, b in zip(before[tid], after[tid])) for tid in after if tid in before}
    ranked = sorted((tid for tid in deltas if tid != pid), key=lambda tid: -deltas[tid][0])

    def share(tid: int | None) -> dict:
        if tid is None:
            return {"on_cpu": 0.0, "run_queue": 0.0}
        return {"on_cpu": deltas[tid][0] / 1e9 / wall_s, "run_queue": deltas[tid][1] / 1e9 / wall_s}

    worker = ranked[1] if len(ranked) > 1 else None
    rest = sum(deltas[tid][0] for tid in ranked[2:]) / 1e9 / wall_s
    return {"engine": share(ranked[0]), "worker": share(worker), "main": share(pid), "rest_on_cpu": rest}


def step_spans_ms(trace: Path, clients: int) -> dict[str, list[float]]:
    """Durations of the engine.step spans, and of their model.forward, whose model.execute ran `clients` requests of
    one token each."""
    from tracer.traces.schema import BATCH_SIZE, MODEL_TOKENS
    from tracer.traces.trace_file import read_trace_file

    spans = read_trace_file(trace)
    decode_traces = set()
    for span in spans.named("model.execute"):
        if span.attributes.get(MODEL_TOKENS) == clients and span.attributes.get(BATCH_SIZE) == clients:
            decode_traces.add(span.trace_id)
    return {name: [s.duration_ns / 1e6 for s in spans.named(name) if s.trace_id in decode_traces]
            for name in ("engine.step", "model.forward")}


def one_server(name: str, threads: int, env: dict[str, str], args, prompts: list[list[int]], trace: Path | None) -> dict:
    engine_args = ["--max-num-seqs", "64", "--max-model-len", "2048", "--kv-cache-mb", "1024"]
    if trace is not None:
        engine_args += ["--trace", str(trace)]
    spec = ours_spec(threads, engine_args)
    spec = replace(spec, env={**spec.env, **env})
    load_before = os.getloadavg()[0]
    passes = []
    with live_lock(say), ServerProcess(spec) as server:
        url = server.base_url + "/v1"
        model = asyncio.run(served_model(url))
        asyncio.run(run_level(url, model, 1, [prompts.pop()], args.output_len))  # first-call costs out
        for c in args.concurrency:
            for _ in range(args.passes):
                level_prompts = [prompts.pop() for _ in range(c)]
                snap, busy, server_cpu = thread_snapshot(server.pid), busy_jiffies(), process_cpu_s(server.pid)
                start, client_cpu = time.perf_counter(), time.process_time()
                level = asyncio.run(run_level(url, model, c, level_prompts, args.output_len))
                wall_s, client_cpu = time.perf_counter() - start, time.process_time() - client_cpu
                threads_split = split_threads(server.pid, snap, thread_snapshot(server.pid), wall_s)
                busy_after = busy_jiffies()
                machine_busy = (busy_after[0] - busy[0]) / max(1, busy_after[1] - busy[1]) * (os.cpu_count() or 1)
                server_cores = (process_cpu_s(server.pid) - server_cpu) / wall_s
                passes.append({
                    "clients": c, "wall_s": wall_s, "failed": level["failed"],
                    "itl_p50_ms": level["itl_ms"]["p50"], "tpot_p50_ms": level["tpot_ms"]["p50"],
                    "ttft_p50_ms": level["ttft_ms"]["p50"], "out_tok_s": level["output_throughput"],
                    "threads": threads_split, "server_cores": server_cores, "client_cores": client_cpu / wall_s,
                    "machine_busy_cores": machine_busy,
                    "others_cores": max(0.0, machine_busy - server_cores - client_cpu / wall_s),
                })
                say(f"  {name} c={c}: ITL p50 {level['itl_ms']['p50']:.1f} ms, TPOT p50 {level['tpot_ms']['p50']:.1f}; "
                    f"engine on CPU {threads_split['engine']['on_cpu']:.0%} run queue {threads_split['engine']['run_queue']:.0%}, "
                    f"worker on CPU {threads_split['worker']['on_cpu']:.0%}; others {passes[-1]['others_cores']:.2f} cores")
    run = {"setting": name, "threads": threads, "env": env, "load_1min_before": load_before, "passes": passes}
    if trace is not None:
        time.sleep(0.5)
        run["step_ms"] = {str(c): step_spans_ms(trace, c) for c in args.concurrency}
    return run


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def body(result: dict) -> list[str]:
    settings = list(result["settings"])
    base = settings[0]
    traced = any("step_ms" in run for run in result["runs"])
    lines = [f"Ours (`servetrace serve`), 128-token prompts x {result['output_len']} greedy tokens, one round of c requests at c "
             f"clients per pass; {result['rounds']} rounds (settings interleaved, order rotated per round) x {result['passes']} "
             f"passes per level; medians over the passes. Load: `{result['uptime_before']}` before, `{result['uptime_after']}` after.", "",
             "Shares are of each pass's wall time (/proc schedstat): on CPU, and runnable but waiting on a run queue "
             "(preempted). Cores: CPU seconds per wall second; others = the machine's busy cores less the server's and the "
             "client's (other sessions).", "",
             "| setting | env | clients | ITL p50 ms | TPOT p50 ms | ITL / " + base + " |"
             + (" engine.step p50 ms (its model.forward) |" if traced else "")
             + " engine on CPU | engine run queue | worker on CPU | worker run queue | main on CPU | server cores | client cores | others cores | 1-min load before |",
             "|---|---|---:|---:|---:|---:|" + ("---:|" if traced else "") + "---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in result["concurrency"]:
        base_itl = med([p["itl_p50_ms"] for run in result["runs"] if run["setting"] == base for p in run["passes"] if p["clients"] == c])
        for name in settings:
            runs = [run for run in result["runs"] if run["setting"] == name]
            ps = [p for run in runs for p in run["passes"] if p["clients"] == c and not p["failed"]]
            if not ps:
                continue
            itl = med([p["itl_p50_ms"] for p in ps])
            env = " ".join(f"{k}={v}" for k, v in result["settings"][name][1].items()) or "-"
            spread = ", ".join(f"{p['itl_p50_ms']:.1f}" for p in ps)
            row = f"| {name} | {env} | {c} | {itl:.1f} ({spread}) | {med([p['tpot_p50_ms'] for p in ps]):.1f} | {itl / base_itl:.2f}x |"
            if traced:
                steps = [run.get("step_ms", {}).get(str(c), {}) for run in runs]
                row += (f" {med([x for st in steps for x in st.get('engine.step', [])]):.1f}"
                        f" ({med([x for st in steps for x in st.get('model.forward', [])]):.1f}) |")
            t = lambda who, k: med([p["threads"][who][k] for p in ps])  # noqa: E731
            row += (f" {t('engine', 'on_cpu'):.0%} | {t('engine', 'run_queue'):.0%} | {t('worker', 'on_cpu'):.0%} | {t('worker', 'run_queue'):.0%} "
                    f"| {t('main', 'on_cpu'):.1%} | {med([p['server_cores'] for p in ps]):.2f} | {med([p['client_cores'] for p in ps]):.2f} "
                    f"| {med([p['others_cores'] for p in ps]):.2f} | {', '.join(format(run['load_1min_before'], '.1f') for run in runs)} |")
            lines.append(row)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2, help="passes per level per server, each on fresh prompts")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--setting", type=parse_setting, action="append", default=None,
                        help="NAME=THREADS[:VAR=VALUE,...] (repeatable; default: " + "; ".join(DEFAULT_SETTINGS) + ")")
    parser.add_argument("--trace", action="store_true", help="each server writes a trace; report engine.step spans of full decode steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.rounds < 1 or args.passes < 1 or args.output_len < 2:
        parser.error("--concurrency, --rounds, --passes must be >= 1, --output-len >= 2")
    settings = dict(args.setting) if args.setting else DEFAULT_SETTINGS
    per_server = 1 + args.passes * sum(args.concurrency)
    prompts = draw(args.seed, serving=per_server * args.rounds * len(settings))["serving"]
    uptime_before = _results_uptime()
    runs = []
    names = list(settings)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            threads, env = settings[name]
            trace = SCRATCH / f"trace-{len(runs)}.jsonl" if args.trace else None
            if trace is not None:
                trace.parent.mkdir(parents=True, exist_ok=True)
            say(f"round {r + 1}: {name}")
            runs.append(one_server(name, threads, env, args, [prompts.pop() for _ in range(per_server)], trace))
    result = {"settings": {k: [v[0], v[1]] for k, v in settings.items()}, "concurrency": args.concurrency,
              "rounds": args.rounds, "passes": args.passes, "output_len": args.output_len,
              "uptime_before": uptime_before, "uptime_after": _results_uptime(), "runs": runs}
    lines = body(result)
    # A traced run is a diagnosis (tracing's exporter is one more thread on the cores), not the A/B: a file of its own.
    _results.write_results("serve_threads_traced" if args.trace else "serve_threads",
                           "Serving at 1 and 2 threads: `servetrace serve` under OpenMP wait settings, A/B"
                           + (" (traced)" if args.trace else ""),
                           _results.run_meta(), result, lines)
    print("\n".join(lines))
    return 0


def _results_uptime() -> str:
    return Path("/proc/loadavg").read_text().strip()


if __name__ == "__main__":
    sys.exit(main())
