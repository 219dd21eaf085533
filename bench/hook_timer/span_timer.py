"""Bench-only: times the tracer's own work in this process, around a traced run.

spans.begin and spans.end (the hooks' span bookkeeping on the calling thread: extractors, SDK span
creation and end, links) on the clock the bench chooses, and OTLPJsonLinesFileExporter.export
(serialising and writing a batch) always on time.thread_time: it runs on the exporter's own
thread, whose wall time is mostly waiting for the next batch. Used by bench/span_cost.py
(thread_time for the hooks: CPU, so other load barely moves it) and bench/trace_overhead.py
(perf_counter: wall time, comparable with the run's). An export the hooks run themselves (spans.end
flushes when the engine goes idle, otel.flush_idle, and the SDK's force_flush exports on the calling
thread) is counted once, as export, not in the hooks too. bench/hook_timer/sitecustomize.py times a
live server's processes the same way, with more detail (per hop, bind, the idle flush).

Imports the tracer only when installed, so a bench that put another revision's tree first on
sys.path (span_cost's baseline) times that tree's functions.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class SpanTimer:
    clock: Callable[[], float] = field(repr=False)  # for spans.begin / spans.end
    hooks_s: float = 0.0  # in spans.begin + spans.end, on `clock`, less the exports they ran
    begin_calls: int = 0  # spans.begin calls: hooked calls (one may open no span)
    export_cpu_s: float = 0.0  # in the exporter's export, thread_time, wherever it ran
    exported_spans: int = 0
    export_in_hooks_s: float = 0.0  # the exports spans.end ran (an idle engine's flush), on `clock`

    def reset(self) -> None:
        self.hooks_s, self.begin_calls, self.export_cpu_s, self.exported_spans = 0.0, 0, 0.0, 0
        self.export_in_hooks_s = 0.0

    @contextmanager
    def installed(self) -> Iterator[SpanTimer]:
        """spans.begin / spans.end and the file exporter's export timed while the body runs."""
        from tracer.instrument import exporters, spans

        clock, cpu = self.clock, time.thread_time
        begin, end, export = spans.begin, spans.end, exporters.OTLPJsonLinesFileExporter.export
        in_end = threading.local()  # this thread is in spans.end (the exporter's own thread never is)

        def timed_begin(*args):
            start = clock()
            try:
                return begin(*args)
            finally:
                self.hooks_s += clock() - start
                self.begin_calls += 1

        def timed_end(*args):
            start, exported = clock(), self.export_in_hooks_s
            in_end.active = True
            try:
                return end(*args)
            finally:
                in_end.active = False
                self.hooks_s += clock() - start - (self.export_in_hooks_s - exported)

        def timed_export(exporter, batch):
            start, start_clock = cpu(), clock()
            try:
                return export(exporter, batch)
            finally:
                self.export_cpu_s += cpu() - start
                self.exported_spans += len(batch)
                if getattr(in_end, "active", False):
                    self.export_in_hooks_s += clock() - start_clock

        spans.begin, spans.end, exporters.OTLPJsonLinesFileExporter.export = timed_begin, timed_end, timed_export
        try:
            yield self
        finally:
            spans.begin, spans.end, exporters.OTLPJsonLinesFileExporter.export = begin, end, export
