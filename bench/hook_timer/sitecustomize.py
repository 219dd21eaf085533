"""Bench-only: times servetrace's own work inside a live server's processes (bench/live_trace_overhead.py).

Python imports `sitecustomize` at startup from PYTHONPATH; the bench puts this folder there for its
"timed" traced run only, with SERVETRACE_BENCH_HOOK_STATS naming a folder. In every process of the
server (API server, EngineCore, Worker: each a fresh interpreter, or a fork) it wraps, before the
plugin installs any hook:

- wrappers._binder's bind (the wrapper's argument binding, the first thing each hooked call does),
- spans.begin and spans.end (extractors, context bookkeeping, SDK span creation and end),
- otel.flush_idle (spans.end calls it when the engine goes idle: it waits for the exporter, so it is
  counted apart from end),
- OTLPJsonLinesFileExporter.export (serialising and writing a batch, in the exporter thread),

timing bind with perf_counter (wall), begin / end / flush_idle with both perf_counter and
thread_time (the calling thread's CPU: a context switch to another process in the middle counts
in the wall time only), and the export with thread_time. A daemon thread
writes the running totals to <folder>/<pid>.json twice a second; the bench diffs two snapshots taken
around its measured window. The timers themselves cost well under a microsecond per call
(thread_time is a system call). Does nothing without
the variable.
"""
from __future__ import annotations

import os

_FOLDER = os.environ.get("SERVETRACE_BENCH_HOOK_STATS")


def _setup(folder: str) -> None:
    import json
    import sys
    import threading
    import time
    from collections import defaultdict

    from tracer.instrument import exporters, otel, spans, wrappers

    perf, cpu = time.perf_counter, time.thread_time
    totals: dict = {}

    def reset() -> None:
        totals.clear()
        totals.update(bind_s=0.0, bind_calls=0, begin_s=0.0, begin_cpu_s=0.0, begin_calls=0, spans_opened=0,
                      end_s=0.0, end_cpu_s=0.0, end_calls=0, flush_idle_s=0.0, flush_idle_cpu_s=0.0,
                      flush_idle_calls=0, export_cpu_s=0.0, export_batches=0, exported_spans=0)
        totals["by_hop"] = defaultdict(lambda: [0, 0.0, 0.0])  # hop -> [spans opened, begin+end wall s, CPU s]

    reset()
    original_binder, original_begin, original_end = wrappers._binder, spans.begin, spans.end
    original_flush_idle = otel.flush_idle
    original_export = exporters.OTLPJsonLinesFileExporter.export

    def timed_binder(function):
        bind = original_binder(function)

        def timed_bind(args, kwargs):
            start = perf()
            try:
                return bind(args, kwargs)
            finally:
                totals["bind_s"] += perf() - start
                totals["bind_calls"] += 1

        return timed_bind

    def timed_begin(call, args):
        start, start_cpu = perf(), cpu()
        opened = None
        try:
            opened = original_begin(call, args)
            return opened
        finally:
            spent, spent_cpu = perf() - start, cpu() - start_cpu
            totals["begin_s"] += spent
            totals["begin_cpu_s"] += spent_cpu
            totals["begin_calls"] += 1
            if opened is not None:
                totals["spans_opened"] += 1
                entry = totals["by_hop"][call.hop]
                entry[0] += 1
                entry[1] += spent
                entry[2] += spent_cpu

    def timed_end(open_span, *args, **kwargs):
        start, start_cpu = perf(), cpu()
        flushed, flushed_cpu = totals["flush_idle_s"], totals["flush_idle_cpu_s"]
        try:
            return original_end(open_span, *args, **kwargs)
        finally:
            # without the idle flush it may have run (counted on its own)
            spent = perf() - start - (totals["flush_idle_s"] - flushed)
            spent_cpu = cpu() - start_cpu - (totals["flush_idle_cpu_s"] - flushed_cpu)
            totals["end_s"] += spent
            totals["end_cpu_s"] += spent_cpu
            totals["end_calls"] += 1
            entry = totals["by_hop"][open_span.call.hop]
            entry[1] += spent
            entry[2] += spent_cpu

    def timed_flush_idle(*args, **kwargs):
        start, start_cpu = perf(), cpu()
        try:
            return original_flush_idle(*args, **kwargs)
        finally:
            totals["flush_idle_s"] += perf() - start
            totals["flush_idle_cpu_s"] += cpu() - start_cpu
            totals["flush_idle_calls"] += 1

    def timed_export(self, batch):
        start = time.thread_time()
        try:
            return original_export(self, batch)
        finally:
            totals["export_cpu_s"] += time.thread_time() - start
            totals["export_batches"] += 1
            totals["exported_spans"] += len(batch)

    wrappers._binder, spans.begin, spans.end = timed_binder, timed_begin, timed_end
    otel.flush_idle = timed_flush_idle
    exporters.OTLPJsonLinesFileExporter.export = timed_export

    def write() -> None:
        snapshot = {k: (dict(v) if k == "by_hop" else v) for k, v in list(totals.items())}
        snapshot.update(pid=os.getpid(), argv=sys.argv[:3], time=time.time())
        path = os.path.join(folder, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(snapshot, fh)
        os.replace(path + ".tmp", path)

    def writer() -> None:
        while True:
            time.sleep(0.5)
            try:
                write()
            except Exception:
                pass

    def start_writer() -> None:
        threading.Thread(target=writer, name="servetrace-bench-hook-stats", daemon=True).start()

    def after_fork() -> None:
        reset()
        start_writer()

    os.register_at_fork(after_in_child=after_fork)
    start_writer()


if _FOLDER:
    try:
        _setup(_FOLDER)
    except Exception as exc:  # the server must start anyway; the bench notices the missing files
        import sys

        print(f"servetrace bench hook timer: not installed: {type(exc).__name__}: {exc}", file=sys.stderr)
