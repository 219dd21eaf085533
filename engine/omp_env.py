"""OpenMP's wait policy for this process, set before torch loads libgomp (it reads the variable once).

Imports nothing (torch least of all), so an entry point can call it first thing.
"""
from __future__ import annotations

import os


def use_passive_omp_wait() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the environment already says otherwise; no effect once torch
    (libgomp) has loaded, so every entry point that may run the engine calls this before importing it.

    Speed trick: libgomp's default has idle OpenMP workers spin, and on this shared 2-core machine
    (the engine thread beside an HTTP server, a client, other processes) the spinning workers take
    the cores the computing ones need: at 2 threads a batch-1 decode step's median went from 23.6 ms
    passive to 199.0 ms spinning, at 1 thread from 20.7 to 31.5 ms (bench/results/openmp_policy.md,
    bench/openmp_policy.py). Passive workers sleep between parallel regions instead.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
