"""OpenMP's wait policy for this process, set before torch loads libgomp (it reads the variable once),
and keeping libgomp to one pool of workers (on_passing_thread).

Imports nothing (torch least of all), so an entry point can call it first thing.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def use_passive_omp_wait() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the environment already says otherwise; no effect once torch
    (libgomp) has loaded: the tests, labs and benches that run beside other work call this before
    importing it (the command line spins a little first: use_bounded_omp_wait). The offline LLMEngine,
    imported on its own, runs with libgomp's default, as vLLM's LLM class does: spinning ~300k rounds
    before a worker sleeps, faster on a quiet machine with one pool (on_passing_thread), and crawling once
    other processes want the cores (bench/results/openmp_pools.md).

    Speed trick: libgomp's default has idle OpenMP workers spin, and on this shared 2-core machine
    (the engine thread beside an HTTP server, a client, other processes) the spinning workers take
    the cores the computing ones need: at 2 threads a batch-1 decode step's median went from 23.6 ms
    passive to 199.0 ms spinning, at 1 thread from 20.7 to 31.5 ms (bench/results/openmp_policy.md,
    bench/openmp_policy.py). Passive workers sleep between parallel regions instead.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Rounds an idle OpenMP worker of the command line's processes spins before it sleeps (SERVING_SPIN_COUNT, see
# use_bounded_omp_wait). A round is one x86 `pause`: about 26 ns on this machine's CPU (100000 rounds took 2.6 ms).
SERVING_SPIN_COUNT = 10000


def use_bounded_omp_wait(spin_count: int = SERVING_SPIN_COUNT) -> None:
    """OMP_WAIT_POLICY=PASSIVE with GOMP_SPINCOUNT=spin_count, unless the environment sets either (the user's
    choice stands); no effect once torch (libgomp) has loaded. The command line calls it first thing, so
    `servetrace serve` (and generate, demo) run with it; tests, labs and benches keep use_passive_omp_wait.

    Speed trick: under PASSIVE alone a worker sleeps the moment a parallel region ends, and a decode step has
    hundreds of regions microseconds apart: each pays a futex wake-up of the sleeping worker (and of the master
    waiting at the region's end), and on this 2-core VM that made a 2-thread step slower than a 1-thread one.
    Spinning spin_count rounds (~0.26 ms here) first keeps the worker awake across those gaps. Served at 2
    threads, 16 clients, on a quiet machine: ITL p50 30.3 ms vs 41.9 passive and 36.5 at 1 thread, the
    engine.step span within 0.5 ms of the client's ITL (the event loop took 2-3% of a core, the client 0.04
    cores: it is the wake-ups, not the HTTP side); 4 clients 17.5 vs 23.8 / 21.2 (bench/results/
    serve_threads_traced.md, serve_threads.md). The price: when another process keeps a core busy, spinning
    workers and a preempted team member stall each other's regions, and a pass where others took 0.7-1.0
    core ran at 117.7-137.3 ms where passive ran 25.8-45.4 and 1 thread 19.0-38.2 (serve_threads.md): on a
    shared machine, serve with 1 thread (OMP_NUM_THREADS=1) or set OMP_WAIT_POLICY / GOMP_SPINCOUNT.
    vLLM 0.32's CPU worker spins libgomp's default 300000 rounds (.venv-vllm's utils/ompmultiprocessing.py:92-96,
    OMPProcessManager.configure_omp_envs, sets only GOMP_CPU_AFFINITY). PASSIVE rather than libgomp's unset policy because with a count given, PASSIVE
    leaves libgomp's throttled count (used when its own threads outnumber the CPUs) at 0: an oversubscribed
    process sleeps at once, as before (libgomp/env.c initialize_env).
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["GOMP_SPINCOUNT"] = str(spin_count)


def omp_waits_passively() -> bool:
    """Whether libgomp's workers in this process sleep as soon as a parallel region ends: OMP_WAIT_POLICY=PASSIVE
    and no spin before the sleep (GOMP_SPINCOUNT unset or 0). libgomp reads both once, when torch loads it
    (libgomp/env.c initialize_env: an explicit GOMP_SPINCOUNT is the spin count whatever the policy; PASSIVE
    without one leaves it 0), and the entry points set them before that."""
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE":
        return False
    return _spin_count(os.environ.get("GOMP_SPINCOUNT")) == 0


def _spin_count(text: str | None) -> int:
    """GOMP_SPINCOUNT as libgomp parses it (a number with an optional k / M / G / T; "infinite"); None: unset (0 under
    PASSIVE). A value libgomp rejects leaves its count at PASSIVE's 0."""
    if text is None or not text.strip():
        return 0
    value = text.strip().lower()
    if value.startswith(("infinite", "infinity")):
        return 2**64 - 1
    scale = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}.get(value[-1:], 1)
    digits = value[:-1].strip() if scale > 1 else value
    return int(digits) * scale if digits.isdigit() else 0


def on_passing_thread(build: Callable[[], T]) -> T:
    """Run build() on a thread of its own that ends when it returns; its result (or its exception).

    Speed trick: libgomp keeps a pool of OpenMP workers for each thread that has started a parallel
    region, for as long as that thread lives, and once the pools' threads outnumber the cores it
    throttles every worker's spin before sleep to ~1000 rounds: a worker then sleeps between two
    of a step's ~150 parallel regions and each region pays a wake-up (tens of us). An engine built
    on one thread (loading and packing the weights run parallel regions) and stepped on another (an
    offline worker's step thread, the server's busy loop) held two pools, so at 2 threads a
    batch-8 decode step took 26.2 ms where one pool's took 19.6 (medians at load ~1,
    bench/results/openmp_pools.md; 22-27 vs 15-16 ms in single runs on a quieter machine). Built
    on a passing thread, the pool it started ends with it, and the stepping thread's is the only one.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = build()
        except BaseException as error:  # re-raised on the caller's thread
            box["error"] = error

    thread = threading.Thread(target=run, name="servetrace-build", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
