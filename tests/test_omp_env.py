"""engine.omp_env: work that starts OpenMP workers on a passing thread leaves none behind; the wait policy each
entry point gives libgomp."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from engine import omp_env
from engine.omp_env import on_passing_thread

ROOT = Path(__file__).resolve().parent.parent


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def parallel_work() -> float:
    # Large enough that ATen splits it over the threads (a region of 2 OpenMP threads).
    return float(torch.ones(4_000_000).mul(2.0).sum())


def steady_thread_count(timeout_s: float = 5.0) -> int:
    """The process's native thread count once it stops changing (workers of an ended pool exit
    asynchronously)."""
    deadline = time.monotonic() + timeout_s
    count = native_threads()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        again = native_threads()
        if again == count:
            return count
        count = again
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_openmp_workers_started_on_a_passing_thread_end_with_it():
    def in_fresh_thread(work) -> tuple[int, int]:
        # A fresh thread has no OpenMP pool yet; the main test thread may have one from earlier tests.
        counts: list[int] = []

        def body() -> None:
            torch.set_num_threads(2)
            before = steady_thread_count()
            work()
            counts.extend([before, steady_thread_count()])

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        return counts[0], counts[1]

    before, after = in_fresh_thread(lambda: on_passing_thread(parallel_work))
    assert after == before  # the passing thread's pool went with it
    # The planted case: the same work on the calling thread keeps its pool's worker alive.
    before, after = in_fresh_thread(parallel_work)
    assert after > before


def test_the_result_comes_back_and_an_error_is_raised_on_the_caller():
    assert on_passing_thread(lambda: threading.current_thread().name) == "servetrace-build"
    with pytest.raises(ValueError, match="bad build"):
        on_passing_thread(lambda: (_ for _ in ()).throw(ValueError("bad build")))


def _libgomp_settings(code: str, **env: str) -> dict[str, str]:
    """OMP_WAIT_POLICY and GOMP_SPINCOUNT as the libgomp torch loads in a fresh process running `code` reads them
    (OMP_DISPLAY_ENV=VERBOSE prints them when it starts)."""
    # A fresh environment, not this process's: vLLM's CPU platform hook, run in-process by tests that build
    # its config, puts torch's libgomp in LD_PRELOAD, and a preloaded libgomp reads its settings before Python
    # runs (tracer/replay/runners/vllm.py environment_kept says where; this test is about the command line).
    clean = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV") if k in os.environ}
    done = subprocess.run([sys.executable, "-c", code + "; import torch; torch.ones(1)"], capture_output=True, text=True,
                          env={**clean, **env, "OMP_DISPLAY_ENV": "VERBOSE"}, timeout=120, cwd=ROOT)
    found = dict(re.findall(r"^\s*(OMP_WAIT_POLICY|GOMP_SPINCOUNT) = '(\w+)'", done.stderr, re.M))
    assert len(found) == 2, done.stderr[-2000:]
    return found


def test_the_command_line_runs_libgomp_with_a_bounded_spin_before_the_sleep():
    # `servetrace serve` (tracer.cli): passive, after omp_env.SERVING_SPIN_COUNT rounds of spinning.
    settings = _libgomp_settings("import tracer.cli")
    assert settings == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(omp_env.SERVING_SPIN_COUNT)}
    assert settings["GOMP_SPINCOUNT"] != "0"
    # The tests, labs and benches' policy: no spin at all.
    assert _libgomp_settings("from engine.omp_env import use_passive_omp_wait; use_passive_omp_wait()") == {
        "OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}


def test_a_wait_policy_the_user_set_is_kept():
    assert _libgomp_settings("import tracer.cli", OMP_WAIT_POLICY="ACTIVE")["OMP_WAIT_POLICY"] == "ACTIVE"
    assert _libgomp_settings("import tracer.cli", OMP_WAIT_POLICY="PASSIVE")["GOMP_SPINCOUNT"] == "0"
    assert _libgomp_settings("import tracer.cli", GOMP_SPINCOUNT="500")["GOMP_SPINCOUNT"] == "500"
