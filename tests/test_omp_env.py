"""engine.omp_env.on_passing_thread: work that starts OpenMP workers leaves none behind."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from engine.omp_env import on_passing_thread


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
