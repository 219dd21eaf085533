"""bench/serve_threads.py's bookkeeping on given numbers: settings as the command line spells them, the engine thread
and the OpenMP worker told apart by CPU time, and each setting's ITL as a ratio of the first's. No timing is asserted."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
SPEC = importlib.util.spec_from_file_location("serve_threads", BENCH / "serve_threads.py")
serve_threads = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = serve_threads
SPEC.loader.exec_module(serve_threads)


def test_a_setting_is_a_name_a_thread_count_and_an_environment():
    assert serve_threads.parse_setting("2 threads, spin=2:OMP_WAIT_POLICY=PASSIVE,GOMP_SPINCOUNT=10000") == (
        "2 threads, spin", (2, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}))
    assert serve_threads.parse_setting("one=1") == ("one", (1, {}))
    for bad in ("no threads", "x=0", "x=two", "x=2:GOMP_SPINCOUNT", "=2"):
        with pytest.raises(argparse.ArgumentTypeError):
            serve_threads.parse_setting(bad)


def test_the_engine_thread_is_the_busiest_but_main_and_the_worker_the_next():
    pid, engine, worker, helper = 100, 101, 102, 103
    before = {pid: (0, 0, 0), engine: (0, 0, 0), worker: (0, 0, 0), helper: (0, 0, 0)}
    # ns on a CPU, ns on a run queue, voluntary switches; main is busier than the worker and must not be taken for it
    after = {pid: (600_000_000, 0, 5), engine: (900_000_000, 50_000_000, 5), worker: (400_000_000, 100_000_000, 9),
             helper: (10_000_000, 0, 1)}
    split = serve_threads.split_threads(pid, before, after, wall_s=1.0)
    assert split["engine"] == {"on_cpu": 0.9, "run_queue": 0.05}
    assert split["worker"] == {"on_cpu": 0.4, "run_queue": 0.1}
    assert split["main"]["on_cpu"] == 0.6
    assert split["rest_on_cpu"] == pytest.approx(0.01)


def _run(setting: str, itl: float) -> dict:
    shares = {"on_cpu": 0.5, "run_queue": 0.0}
    level = {"clients": 16, "failed": 0, "itl_p50_ms": itl, "tpot_p50_ms": itl,
             "threads": {"engine": shares, "worker": shares, "main": shares, "rest_on_cpu": 0.0},
             "server_cores": 1.0, "client_cores": 0.1, "others_cores": 0.0}
    return {"setting": setting, "load_1min_before": 1.0, "passes": [level]}


def test_each_setting_is_reported_as_a_ratio_of_the_first_one():
    result = {"settings": {"1 thread": [1, {}], "2 threads": [2, {"GOMP_SPINCOUNT": "0"}]}, "concurrency": [16],
              "rounds": 2, "passes": 1, "output_len": 32, "uptime_before": "-", "uptime_after": "-",
              "runs": [_run("1 thread", 40.0), _run("2 threads", 30.0), _run("2 threads", 20.0), _run("1 thread", 30.0)]}
    rows = [line for line in serve_threads.body(result) if line.startswith("| 1 thread") or line.startswith("| 2 threads")]
    # medians over the passes: 35.0 for the first setting, 25.0 for the second
    assert rows[0].split(" | ")[3:6] == ["35.0 (40.0, 30.0)", "35.0", "1.00x"]
    assert rows[1].split(" | ")[1] == "GOMP_SPINCOUNT=0"
    assert rows[1].split(" | ")[3:6] == ["25.0 (30.0, 20.0)", "25.0", "0.71x"]
