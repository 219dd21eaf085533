"""Where a served step's time goes (issue 19's serving rows): `servetrace serve` under the peers bench's streaming
client and workload, split by server thread, so the HTTP side's share is a number rather than a guess.

Ours serves as one process: the engine thread steps the model while the event loop (uvicorn, FastAPI, the SSE
streams) runs in the main thread, and both share one GIL. Per level this reports
- the client's TPOT / ITL p50 (bench/serve_bench.py's one_request, bench/_peers_serving.py's run_level);
- per server thread, from /proc/<pid>/task/<tid>/schedstat and status read around the level: the share of the
  level's wall time it ran on a CPU, waited on a run queue (runnable but preempted: other processes, other
  threads) and slept (waiting for the GIL, a lock, or idle), and its voluntary context switches (each GIL wait
  that blocks is one);
- with --py-spy, a second pass of each level on fresh prompts sampled by py-spy (--nonblocking --threads --idle):
  the engine thread's samples by what it was doing (the forward, the runner's host work, the scheduler, output
  processing, idle) and the main thread's busy samples by layer (uvicorn + h11, starlette / FastAPI, pydantic,
  our server code, asyncio).

    .venv/bin/python bench/serve_profile.py [--threads 1] [--concurrency 1 4 16] [--requests-per-client 2] [--py-spy]

Results: bench/results/serve_profile.{json,md}. Holds /tmp/servetrace-live.lock while the server runs.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results  # noqa: E402
from _peers_lock import live_lock  # noqa: E402
from _peers_serving import ours_spec, run_level  # noqa: E402
from _peers_workload import draw  # noqa: E402
from serve_bench import served_model  # noqa: E402
from tracer.live.process import ServerProcess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PY_SPY = REPO / ".venv" / "bin" / "py-spy"

# The engine thread's py-spy samples: the innermost frame that names one of these decides the sample's kind.
ENGINE_KINDS = [
    ("forward", ("LlamaForCausalLM.forward", "LlamaForCausalLM.compute_logits")),
    ("runner host work (input prep, sampling)", ("ModelRunner.",)),
    ("scheduler", ("Scheduler.", "KVCacheManager.")),
    ("output processing + detokenize", ("OutputProcessor.", "IncrementalDetokenizer.")),
    ("waiting for work", ("Condition.wait",)),
]
# The main thread's busy samples, by the file of the innermost frame that matches.
MAIN_LAYERS = [
    ("pydantic", ("pydantic/",)),
    ("uvicorn + h11 (HTTP)", ("uvicorn/", "h11/", "httptools/")),
    ("starlette / FastAPI / anyio", ("starlette/", "fastapi/", "anyio/")),
    ("engine/server.py, http_utils.py", ("engine/server.py", "engine/http_utils.py", "engine/protocol.py")),
    ("engine/async_engine.py", ("engine/async_engine.py",)),
    # uvloop is C: a running main thread whose innermost Python frame is the loop's run is in uvloop's own code.
    ("uvloop (C: event loop, socket I/O)", ("asyncio/runners.py",)),
    ("asyncio / threads (to_thread)", ("asyncio/", "concurrent/", "threading.py")),
]
SPY_RATE = 200  # samples/s
FRAME = re.compile(r"(\S+) \((.*?):\d+\)")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def thread_snapshot(pid: int) -> dict[int, tuple[int, int, int]]:
    """tid -> (ns on a CPU, ns waiting on a run queue, voluntary context switches)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            on_cpu, run_queue, _ = map(int, Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split())
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:  # a worker thread that ended meanwhile
            continue
        voluntary = int(re.search(r"^voluntary_ctxt_switches:\s*(\d+)", status, re.M).group(1))
        out[int(tid)] = (on_cpu, run_queue, voluntary)
    return out


def thread_shares(pid: int, before: dict, after: dict, wall_s: float) -> dict:
    """The engine thread (the one that ran most), the main thread (tid == pid) and the rest, as shares of wall."""
    deltas = {tid: tuple(b - a for a, b in zip(before[tid], after[tid])) for tid in after if tid in before}
    engine_tid = max((tid for tid in deltas if tid != pid), key=lambda tid: deltas[tid][0])

    def share(d: tuple[int, int, int]) -> dict:
        on_cpu, run_queue = d[0] / 1e9 / wall_s, d[1] / 1e9 / wall_s
        return {"on_cpu": round(on_cpu, 4), "run_queue": round(run_queue, 4),
                "asleep": round(max(0.0, 1 - on_cpu - run_queue), 4), "voluntary_switches": d[2]}

    others = [d for tid, d in deltas.items() if tid not in (pid, engine_tid)]
    return {"engine_tid": engine_tid, "engine": share(deltas[engine_tid]), "main": share(deltas[pid]),
            "other_threads_on_cpu": round(sum(d[0] for d in others) / 1e9 / wall_s, 4)}


def classify(stack: list[str], kinds: list[tuple[str, tuple[str, ...]]], by_file: bool) -> str | None:
    for frame in reversed(stack):  # innermost first
        match = FRAME.match(frame)
        if match is None:
            continue
        text = match.group(2) if by_file else match.group(1)
        for kind, needles in kinds:
            if any((needle in text) if by_file else text.startswith(needle) for needle in needles):
                return kind
    return None


def read_py_spy(path: Path) -> dict:
    """py-spy's raw (collapsed) output of running threads only (no --idle: a thread asleep, on the GIL or
    elsewhere, is not sampled) -> the engine thread's kinds, the main thread's layers."""
    engine, main = Counter(), Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "engine-busy-loop" in frames[0]:
            engine[classify(frames[1:], ENGINE_KINDS, by_file=False) or "other step work"] += int(count)
        elif "MainThread" in frames[0] and len(frames) > 1:
            main[classify(frames[1:], MAIN_LAYERS, by_file=True) or "other Python"] += int(count)
    return {"engine_samples": dict(engine.most_common()), "main_busy_samples": dict(main.most_common())}


def measure(args: argparse.Namespace) -> dict:
    per_level = {c: c * args.requests_per_client for c in args.concurrency}
    passes = 2 if args.py_spy else 1
    ids = draw(args.seed, serving=1 + passes * sum(per_level.values()))["serving"]
    warmup, rest = ids[0], ids[1:]
    engine_args = ["--max-num-seqs", "64", "--max-model-len", "2048", "--kv-cache-mb", "1024"]
    levels = []
    with live_lock(say), ServerProcess(ours_spec(args.threads, engine_args)) as server:
        url = server.base_url + "/v1"
        model = asyncio.run(served_model(url))
        asyncio.run(run_level(url, model, 1, [warmup], args.output_len))  # first-call costs out of the levels
        for c in args.concurrency:
            prompts, rest = rest[:per_level[c]], rest[per_level[c]:]
            before, start = thread_snapshot(server.pid), time.perf_counter()
            level = asyncio.run(run_level(url, model, c, prompts, args.output_len))
            wall_s = time.perf_counter() - start
            row = {"clients": c, "requests": len(prompts), "wall_s": round(wall_s, 2), "failed": level["failed"],
                   "tpot_p50_ms": round(level["tpot_ms"]["p50"], 1), "itl_p50_ms": round(level["itl_ms"]["p50"], 1),
                   "ttft_p50_ms": round(level["ttft_ms"]["p50"]), "threads": thread_shares(server.pid, before, thread_snapshot(server.pid), wall_s)}
            if args.py_spy:
                prompts, rest = rest[:per_level[c]], rest[per_level[c]:]
                out = REPO / ".cache" / "serve_profile" / f"py-spy-{c}.txt"
                out.parent.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(server.pid), "--rate", str(SPY_RATE), "--threads",
                                        "--nonblocking", "--format", "raw", "-o", str(out)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # py-spy attaches
                spied_start = time.perf_counter()
                asyncio.run(run_level(url, model, c, prompts, args.output_len))
                spied_s = time.perf_counter() - spied_start
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
                # The samples a thread running all along the level would have had (py-spy runs a little before and after it: idle there).
                row["py_spy"] = {**read_py_spy(out), "samples_per_thread": round(SPY_RATE * spied_s)}
            engine, main = row["threads"]["engine"], row["threads"]["main"]
            say(f"  c={c}: TPOT p50 {row['tpot_p50_ms']} ms, ITL p50 {row['itl_p50_ms']} ms; engine thread on CPU "
                f"{engine['on_cpu']:.1%}, run queue {engine['run_queue']:.1%}, asleep {engine['asleep']:.1%}; main thread on CPU {main['on_cpu']:.1%}")
            levels.append(row)
    return {"threads": args.threads, "output_len": args.output_len, "requests_per_client": args.requests_per_client,
            "levels": levels}


def pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def body(result: dict) -> list[str]:
    lines = [f"Ours with {result['threads']} torch thread(s) (OMP_NUM_THREADS), streaming clients, 128-token prompts x "
             f"{result['output_len']} tokens, {result['requests_per_client']} requests per client per level; load "
             f"{result['uptime_before']} before, {result['uptime_after']} after.", "",
             "Share of each level's wall time, per server thread (/proc schedstat): on a CPU, runnable but waiting "
             "on a run queue (preempted), asleep (the GIL, a lock, idle); voluntary switches count the sleeps.", "",
             "| clients | TPOT p50 ms | ITL p50 ms | engine on CPU | engine run queue | engine asleep | engine voluntary switches "
             "| main (HTTP) on CPU | main run queue | other threads on CPU |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["levels"]:
        e, m = row["threads"]["engine"], row["threads"]["main"]
        lines.append(f"| {row['clients']} | {row['tpot_p50_ms']} | {row['itl_p50_ms']} | {pct(e['on_cpu'])} | {pct(e['run_queue'])} "
                     f"| {pct(e['asleep'])} | {e['voluntary_switches']} | {pct(m['on_cpu'])} | {pct(m['run_queue'])} "
                     f"| {pct(row['threads']['other_threads_on_cpu'])} |")
    spied = [row for row in result["levels"] if "py_spy" in row]
    if spied:
        lines += ["", f"py-spy ({SPY_RATE} Hz, running threads only, on a second pass of each level with fresh prompts): "
                  "each thread's running samples by what it ran, as a share of the samples a thread running all along "
                  "would have had over the pass's wall time.", ""]
        for row in spied:
            total = row["py_spy"]["samples_per_thread"]
            for name, key in (("engine thread", "engine_samples"), ("main (HTTP) thread", "main_busy_samples")):
                samples = row["py_spy"][key]
                lines.append(f"- {row['clients']} clients, {name}, running {pct(sum(samples.values()) / total)}: "
                             + ", ".join(f"{kind} {pct(n / total)}" for kind, n in samples.items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="ours' torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--py-spy", action="store_true", help="also sample each level with py-spy (a second pass)")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.requests_per_client < 1 or args.output_len < 2 or args.threads < 1:
        parser.error("--concurrency, --requests-per-client, --threads must be >= 1, --output-len >= 2")
    if args.py_spy and not PY_SPY.exists():
        parser.error(f"--py-spy: {PY_SPY} is not installed")
    uptime_before = os.getloadavg()
    result = measure(args)
    result["uptime_before"] = [round(x, 2) for x in uptime_before]
    result["uptime_after"] = [round(x, 2) for x in os.getloadavg()]
    lines = body(result)
    _results.write_results("serve_profile", "Serving profile: where a served step's time goes, per server thread",
                           _results.run_meta(), result, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
