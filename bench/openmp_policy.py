"""How OpenMP's thread settings change our batch-1 decode step on this shared CPU, each setting in a
fresh process (they are read once, when torch loads libgomp), alternating round by round.

The settings: the wait policy (OMP_WAIT_POLICY=PASSIVE, which `servetrace serve`, the tests and the
benches set before torch loads; libgomp's default, which spins ~300k iterations before it sleeps;
a bounded spin, GOMP_SPINCOUNT) and thread pinning as vLLM's CPU worker does it
(GOMP_CPU_AFFINITY with libgomp: .venv-vllm/.../vllm/utils/ompmultiprocessing.py:71-102), at 1 and 2
compute threads. Each run: one engine (this tree, its default dtype), --prompt-len prompt tokens, a
warm-up, then --max-tokens greedy decode steps of one request; the median step (and the fastest).
A run that takes longer than --run-timeout is recorded as timed out (spinning threads on an
oversubscribed CPU can crawl). Then, in one process under the passive policy, 1 vs 2 threads by batch size
with the thread count alternating step by step within each decode run (the fairest A/B on a machine whose
load moves by the second): what engine/cpu_gemm.py's compute_threads_for rests on.
Prints tables; writes bench/results/openmp_policy.{json,md}.

    .venv/bin/python bench/openmp_policy.py [--rounds 2] [--max-tokens 32] [--run-timeout 300]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (threads, environment, what it is); every run also gets OMP_NUM_THREADS = threads.
CASES = (
    (1, {"OMP_WAIT_POLICY": "PASSIVE"}, "passive (ours)"),
    (1, {}, "libgomp default (spins)"),
    (1, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_CPU_AFFINITY": "0"}, "passive, pinned to core 0"),
    (2, {"OMP_WAIT_POLICY": "PASSIVE"}, "passive (ours)"),
    (2, {}, "libgomp default (spins)"),
    (2, {"GOMP_SPINCOUNT": "3000"}, "bounded spin, 3000"),
    (2, {"GOMP_CPU_AFFINITY": "0 1"}, "pinned to cores 0 1, default spin (vLLM's)"),
    (2, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_CPU_AFFINITY": "0 1"}, "passive, pinned to cores 0 1"),
)
OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GOMP_CPU_AFFINITY", "OMP_PROC_BIND", "OMP_PLACES", "OMP_NUM_THREADS")


def child(threads: int, prompt_len: int, max_tokens: int) -> None:
    """One run in this process (its OpenMP environment already set): prints one JSON line."""
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)
    from engine import cpu_gemm
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    cpu_gemm.SERIAL_STEP_MAX_TOKENS = 0  # the thread count asked for, on every step (not the engine's own choice)
    engine = LLMEngine(EngineConfig(model=ModelConfig(dtype=None), cache=CacheConfig(num_blocks=64),
                                    scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=2048, max_model_len=512)))

    def decode(salt: int, steps: int) -> list[float]:
        ids = [(1000 + 7 * salt + 13 * j) % 40000 + 100 for j in range(prompt_len)]
        engine.add_request(None, ids, SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True))
        engine.step()  # prefill
        times = []
        while engine.has_unfinished_requests():
            start = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - start)
        return times

    decode(1, 4)  # warm-up
    times = decode(2, max_tokens)
    print(json.dumps({"median_ms": statistics.median(times) * 1e3, "fastest_ms": min(times) * 1e3,
                      "dtype": str(engine.model_runner.dtype).removeprefix("torch.")}))


def alternating_child(batches: list[int], prompt_len: int, max_tokens: int) -> None:
    """Decode runs at each batch size, the thread count switching 1, 2, 1, 2 ... step by step."""
    sys.path.insert(0, str(ROOT))
    import torch

    from engine import cpu_gemm
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    cpu_gemm.SERIAL_STEP_MAX_TOKENS = 0  # the raw thread counts, without the engine's own choice
    engine = LLMEngine(EngineConfig(model=ModelConfig(dtype=None), cache=CacheConfig(num_blocks=max(batches) * 12 + 16),
                                    scheduler=SchedulerConfig(max_num_seqs=max(batches), max_num_batched_tokens=4096,
                                                              max_model_len=512)))
    salt = 0

    def run(batch: int, steps: int) -> dict[int, list[float]]:
        nonlocal salt
        torch.set_num_threads(2)
        for _ in range(batch):
            salt += 1
            ids = [(1000 + 7 * salt + 13 * j) % 40000 + 100 for j in range(prompt_len)]
            engine.add_request(None, ids, SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True))
        engine.step()  # prefill
        times: dict[int, list[float]] = {1: [], 2: []}
        while engine.has_unfinished_requests():
            threads = 1 + (len(times[1]) + len(times[2])) % 2
            torch.set_num_threads(threads)
            start = time.perf_counter()
            engine.step()
            times[threads].append((time.perf_counter() - start) * 1e3)
        return times

    run(1, 6), run(max(batches), 6)  # warm-up
    rows = []
    for batch in batches:
        times = run(batch, max_tokens)
        rows.append({"batch": batch, **{f"median_ms_{t}t": statistics.median(v) for t, v in times.items()},
                     **{f"fastest_ms_{t}t": min(v) for t, v in times.items()}, "load_1min": os.getloadavg()[0]})
    print(json.dumps(rows))


def run_case(threads: int, env: dict[str, str], args: argparse.Namespace) -> dict:
    child_env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}
    child_env.update(env, OMP_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--child", str(threads), "--prompt-len", str(args.prompt_len),
               "--max-tokens", str(args.max_tokens)]
    load = os.getloadavg()[0]
    try:
        done = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=args.run_timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "load_1min_before": round(load, 2)}
    if done.returncode:
        raise RuntimeError(f"run failed ({threads} threads, {env}): {done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "load_1min_before": round(load, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--run-timeout", type=float, default=300)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                        help="batch sizes of the step-alternating 1 vs 2 threads part")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--alternating-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.prompt_len, args.max_tokens)
        return 0
    if args.alternating_child:
        alternating_child(args.batches, args.prompt_len, args.max_tokens)
        return 0

    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(ROOT / "bench"))
    from _results import run_meta, write_results

    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    runs: dict[int, list[dict]] = {i: [] for i in range(len(CASES))}
    for round_ in range(args.rounds):
        for i, (threads, env, what) in enumerate(CASES):
            result = run_case(threads, env, args)
            runs[i].append(result)
            print(f"round {round_ + 1}/{args.rounds}: {threads} thread(s), {what}: {result}", file=sys.stderr)
    print("1 vs 2 threads by batch, alternating step by step ...", file=sys.stderr)
    env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, __file__, "--alternating-child", "--prompt-len", str(args.prompt_len),
                           "--max-tokens", str(max(args.max_tokens, 8)), "--batches", *map(str, args.batches)],
                          env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    by_batch = json.loads(done.stdout.strip().splitlines()[-1])
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    def cell(results: list[dict], key: str) -> str:
        values = [r[key] for r in results if not r.get("timed_out")]
        shown = ", ".join(f"{v:.1f}" for v in values) + "".join(f", > {args.run_timeout:.0f} s run" for r in results if r.get("timed_out"))
        return f"{statistics.median(values):.1f} ({shown})" if values else shown.lstrip(", ")

    rows = []
    for i, (threads, env, what) in enumerate(CASES):
        rows.append({"threads": threads, "setting": what, "env": env, "runs": runs[i],
                     "median_ms": cell(runs[i], "median_ms"), "fastest_ms": cell(runs[i], "fastest_ms"),
                     "load_1min_before": [r["load_1min_before"] for r in runs[i]]})
    table = Table(title=f"batch-1 decode ms/step by OpenMP setting, {args.rounds} alternating rounds")
    for col in ("threads", "setting", "environment", "median step (per round)", "fastest step (per round)", "load before"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["threads"]), r["setting"], " ".join(f"{k}={v}" for k, v in r["env"].items()) or "(none)",
                      r["median_ms"], r["fastest_ms"], ", ".join(map(str, r["load_1min_before"])))
    Console().print(table)
    body = [
        f"One fresh process per run (OpenMP reads its settings when torch loads libgomp), the settings alternating "
        f"round by round; batch-1 decode of a {args.prompt_len}-token prompt, {args.max_tokens} greedy steps, "
        f"median step (and fastest), ms; the run's value in brackets per round. Load: `{uptime_start}` at the start, "
        f"`{uptime_end}` at the end.", "",
        "| threads | setting | environment | median step (per round) | fastest step (per round) | 1-min load before each run |",
        "|---:|---|---|---|---|---|",
        *[f"| {r['threads']} | {r['setting']} | {' '.join(f'`{k}={v}`' for k, v in r['env'].items()) or '(none)'} | "
          f"{r['median_ms']} | {r['fastest_ms']} | {', '.join(map(str, r['load_1min_before']))} |" for r in rows],
    ]
    body += [
        "", f"1 vs 2 threads by batch size (passive policy, one process; each decode run of {max(args.max_tokens, 8)} steps "
        "switches the thread count step by step, so both see the same load and context lengths); ms per step:", "",
        "| batch | median, 1 thread | median, 2 threads | 2 threads / 1 | fastest, 1 thread | fastest, 2 threads | 1-min load |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['batch']} | {r['median_ms_1t']:.1f} | {r['median_ms_2t']:.1f} | {r['median_ms_2t'] / r['median_ms_1t']:.2f}x | "
          f"{r['fastest_ms_1t']:.1f} | {r['fastest_ms_2t']:.1f} | {r['load_1min']:.1f} |" for r in by_batch],
    ]
    for r in by_batch:
        print(f"batch {r['batch']}: 1 thread {r['median_ms_1t']:.1f} ms, 2 threads {r['median_ms_2t']:.1f} ms (median step)")
    write_results("openmp_policy", "OpenMP thread settings and our batch-1 decode step",
                  run_meta(uptime_start=uptime_start, uptime_end=uptime_end), {"rows": rows, "threads_by_batch": by_batch}, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
