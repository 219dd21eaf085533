"""One OpenMP pool or two, passive or spinning workers: our decode step at 2 threads, each case in a
fresh process (libgomp reads its settings when torch loads it), the cases alternating round by round.

libgomp keeps a pool of worker threads for every thread that has run a parallel region, for as long
as that thread lives, and throttles every worker's spin to ~1000 rounds once the pools' threads
outnumber the cores. The engine is stepped on a thread of its own (an offline worker's step thread,
the server's busy loop); "two pools" warms the engine up on the main thread first, as
bench/serve_bench.py:build_offline_engine did, so the main thread's pool outlives the warm-up;
"one pool" warms up on a passing thread (engine/omp_env.py:on_passing_thread; LLMEngine builds
its model on one). "small steps on 1 thread": engine/cpu_gemm.py:compute_threads_for's cap for
steps of at most SERIAL_STEP_MAX_TOKENS tokens, which the engine applies only under passive waiting.
Per case: the median decode step at each batch (a --prompt-len prompt per request, --steps greedy
steps) and the 1-minute load before the run. Prints a table; writes bench/results/openmp_pools.{json,md}.

    .venv/bin/python bench/openmp_pools.py [--rounds 2] [--batches 1 8 32] [--steps 24]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GOMP_CPU_AFFINITY", "OMP_PROC_BIND", "OMP_PLACES", "OMP_NUM_THREADS")
# (name, OpenMP environment beside OMP_NUM_THREADS=2, warm-up on the main thread, small steps on 1 thread)
CASES = (
    ("passive, two pools (the old arrangement)", {"OMP_WAIT_POLICY": "PASSIVE"}, True, True),
    ("passive, one pool", {"OMP_WAIT_POLICY": "PASSIVE"}, False, True),
    ("spin, two pools", {}, True, False),
    ("spin, one pool, small steps on 1 thread", {}, False, True),
    ("bounded spin (GOMP_SPINCOUNT=10000), one pool", {"GOMP_SPINCOUNT": "10000"}, False, False),
    ("spin, one pool (the engine's default offline)", {}, False, False),
)


def child(case: int, batches: list[int], prompt_len: int, steps: int) -> None:
    """One case in this process: prints one JSON line {batch: median ms}."""
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(2)
    from engine import cpu_gemm
    from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.omp_env import on_passing_thread
    from engine.sampling_params import SamplingParams

    _, _, warm_on_main, cap_small_steps = CASES[case]
    cpu_gemm.SERIAL_STEP_MAX_TOKENS = 4 if cap_small_steps else 0
    if cap_small_steps:  # the cap whatever the wait policy (the engine applies it only under passive waiting)
        cpu_gemm.omp_waits_passively = lambda: True
    engine = LLMEngine(EngineConfig(model=ModelConfig(dtype=None), cache=CacheConfig(num_blocks=max(batches) * 12 + 16),
                                    scheduler=SchedulerConfig(max_num_seqs=max(batches), max_num_batched_tokens=4096,
                                                              max_model_len=512)))
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    warm_up = lambda: engine.generate([[100 + j for j in range(prompt_len)]] * 2, params)  # noqa: E731
    warm_up() if warm_on_main else on_passing_thread(warm_up)
    medians: dict[int, float] = {}

    def decode_runs() -> None:  # on a thread of its own, as the engine is stepped when served
        for salt, batch in enumerate(batches):
            for i in range(batch):
                ids = [(1000 + 7 * (salt * 100 + i) + 13 * j) % 40000 + 100 for j in range(prompt_len)]
                engine.add_request(None, ids, SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True))
            engine.step()  # the prefill
            times = []
            while engine.has_unfinished_requests():
                start = time.perf_counter()
                engine.step()
                times.append((time.perf_counter() - start) * 1e3)
            medians[batch] = statistics.median(times)

    stepper = threading.Thread(target=decode_runs)
    stepper.start()
    stepper.join()
    print(json.dumps(medians))


def run_case(case: int, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}
    env.update(CASES[case][1], OMP_NUM_THREADS="2")
    load = round(os.getloadavg()[0], 2)
    done = subprocess.run([sys.executable, __file__, "--child", str(case), "--prompt-len", str(args.prompt_len),
                           "--steps", str(args.steps), "--batches", *map(str, args.batches)],
                          env=env, capture_output=True, text=True, timeout=args.run_timeout, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"case {CASES[case][0]!r} failed: {done.stderr[-2000:]}")
    return {"medians_ms": {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}, "load_1min_before": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--run-timeout", type=float, default=300)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.batches, args.prompt_len, args.steps)
        return 0

    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(ROOT / "bench"))
    from _results import run_meta, write_results

    runs: list[list[dict]] = [[] for _ in CASES]
    for round_ in range(args.rounds):
        for case, (name, *_) in enumerate(CASES):
            runs[case].append(run_case(case, args))
            print(f"round {round_ + 1}/{args.rounds}: {name}: {runs[case][-1]}", file=sys.stderr)

    def cell(case: int, batch: int) -> str:
        values = [run["medians_ms"][batch] for run in runs[case]]
        return f"{statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"

    headers = ["setting", *[f"batch {b}" for b in args.batches], "1-min load before each run"]
    table = Table(title=f"decode ms/step at 2 threads, median (per round), {args.rounds} alternating rounds")
    for header in headers:
        table.add_column(header)
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * len(args.batches) + "---|"]
    for case, (name, *_) in enumerate(CASES):
        cells = [name, *[cell(case, b) for b in args.batches], ", ".join(str(r["load_1min_before"]) for r in runs[case])]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    body = [f"Each case a fresh process at OMP_NUM_THREADS=2, stepped on a thread of its own; a {args.prompt_len}-token "
            f"prompt per request, {args.steps} greedy decode steps per batch; ms per step, median of the run (each "
            "round's value in brackets). The script's docstring says what each case arranges.", "", *lines]
    write_results("openmp_pools", "OpenMP pools and wait policy: our 2-thread decode step", run_meta(),
                  {"cases": [c[0] for c in CASES], "runs": runs}, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
