"""The live window of `servetrace tui --listen` (tracer.tui.live): the spans received, by trace,
bounded to the newest `limit` requests, and the model of what it holds.

Past `limit` requests the oldest are dropped (their traces, the step traces and the engine's own
request-less traces that ended before the oldest kept request began), never the newest, and
the stats say how many. The model is built from scratch each time (tracer.tui.model is one pass
over the spans) and trimmed in place to what the window keeps.
"""
from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass
from operator import attrgetter

from tracer.traces.schema import EXTERNAL_ID, NATIVE_REQUEST_ID_KEYS, REQUEST_ID
from tracer.traces.trace_file import SchemaVersionError, SkippedLine
from tracer.tui.loader import LoadedTrace, parse_export
from tracer.tui.model import TraceModel, build_model, step_shape
from tracer.tui.records import Span

DEFAULT_WINDOW = 200  # requests kept; a vLLM request is ~150 spans with its steps
_start, _end, _span_id = attrgetter("start_ns"), attrgetter("end_ns"), attrgetter("span_id")


@dataclass
class WindowStats:
    spans_received: int = 0
    exports_received: int = 0
    requests_dropped: int = 0
    lines_skipped: int = 0
    last_error: str = ""


class LiveWindow:
    """The spans received, by trace, bounded to the newest `limit` requests. Thread-safe: the
    reader adds while the builder builds."""

    def __init__(self, limit: int = DEFAULT_WINDOW, label: str = "live") -> None:
        if limit < 1:
            raise ValueError(f"the window keeps at least one request, got {limit}")
        self.limit = limit
        self.label = label
        self.traces: dict[str, list[Span]] = {}  # trace id -> spans, in arrival order
        self.stats = WindowStats()
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._shape = step_shape()
        self._roots: dict[str, Span] = {}  # trace id -> its entrypoint root (http.request), as it arrives
        self._longest_step_ns: int | None = None  # of the last build: see _drop_ahead

    def add_line(self, line: bytes) -> int:
        """Parse one OTLP/JSON export into the window; the number of spans it held."""
        try:
            spans = parse_export(line)
        except SchemaVersionError as exc:
            spans, error = [], str(exc)
        except Exception as exc:  # a bad export must not stop the feed: counted and shown
            spans, error = [], f"{type(exc).__name__}: {exc}"
        else:
            error = ""
        with self._lock:
            self.stats.exports_received += 1
            if error:
                self.stats.lines_skipped += 1
                self.stats.last_error = error
                return 0
            traces, roots, entrypoints = self.traces, self._roots, self._shape.entrypoints
            for span in spans:
                members = traces.get(span.trace_id)
                if members is None:
                    traces[span.trace_id] = [span]
                else:
                    members.append(span)
                if span.parent_span_id is None and span.name in entrypoints:
                    roots[span.trace_id] = span
            self.stats.spans_received += len(spans)
        self.changed.set()
        return len(spans)

    def build(self) -> TraceModel:
        """The model of the window as it is now, trimmed to the newest `limit` requests: the
        dropped requests' traces leave the window (the next build does not see them) and the
        model handed over holds none of their spans (so nothing of them is freed on the UI
        thread, and the span count it shows is the window's)."""
        dropped_ahead = self._drop_ahead()
        with self._lock:
            spans = [span for members in self.traces.values() for span in members]
            skipped = ([SkippedLine(0, f"{self.stats.lines_skipped} export(s) unreadable: {self.stats.last_error}")]
                       if self.stats.lines_skipped else [])
        spans.sort(key=_end, reverse=True)  # by start, longest first on ties (as the loader sorts)
        spans.sort(key=_start)
        model = build_model(LoadedTrace(spans, skipped, self.label), pause_gc=False)
        excess = len(model.requests) - self.limit
        if excess > 0 or (dropped_ahead and model.requests):  # the steps before the oldest kept go too
            self._drop(model, max(excess, 0))
        self._longest_step_ns = max((step.end_ns - step.start_ns for step in model.steps), default=0)
        return model

    def _drop_ahead(self) -> bool:
        """Drop, before the build, what the build would drop: what it buys is the build's time
        (at 15,000 spans/s, most of what arrived since the last build belongs to requests that
        are older than the newest `limit`; building them only to drop them was over half the
        builder's work, and the builder competes with the UI thread for the GIL).

        Only what is certainly dropped goes. Each trace rooted at an entrypoint is one request,
        starting at its root, so at least `limit` requests start at or after the `limit`-th
        newest root (`horizon`), and every request starting before it is dropped: those traces
        go, with the traces that join them by id (an engine's own request spans: else they would
        make a row of their own), and the step traces that ended a longest step before the
        horizon (steps ending before the oldest kept request are dropped; the margin keeps a
        step whole). The rest is left to the build and _drop."""
        with self._lock:
            roots = list(self._roots.items())
            if len(roots) <= self.limit:
                return False
            traces = list(self.traces.items())
        horizon = heapq.nlargest(self.limit, (root.start_ns for _, root in roots))[-1]
        old = {trace_id for trace_id, root in roots if root.start_ns < horizon}
        old_ids = {str(root.attributes[REQUEST_ID]) for trace_id, root in roots
                   if trace_id in old and REQUEST_ID in root.attributes}
        old_ids -= {str(root.attributes[REQUEST_ID]) for trace_id, root in roots
                    if trace_id not in old and REQUEST_ID in root.attributes}  # an id reused by a kept request
        gone = set(old)
        step_hops = self._shape.hops
        before = None if self._longest_step_ns is None else horizon - 2 * self._longest_step_ns
        for trace_id, members in traces:
            if trace_id in self._roots:
                continue
            root = next((span for span in members if span.parent_span_id is None), None)
            if root is not None and root.name in step_hops:
                if before is not None and max(map(_end, members)) < before:
                    gone.add(trace_id)
            elif old_ids and _joins(members, old_ids):
                gone.add(trace_id)
        with self._lock:
            for trace_id in gone:
                self.traces.pop(trace_id, None)
                self._roots.pop(trace_id, None)
            self.stats.requests_dropped += len(old)
        return bool(gone)

    def _drop(self, model: TraceModel, excess: int) -> None:
        # A request's start is its first span's (the spans are in start order): its summary,
        # which also starts there, would read every span's attributes.
        by_start = sorted(model.requests.values(), key=lambda request: request.spans[0].start_ns)
        dropped, kept = by_start[:excess], by_start[excess:]
        gone = {span.trace_id for request in dropped for span in request.spans}
        horizon = kept[0].spans[0].start_ns
        # Steps no kept request can have taken part in: ended before the oldest kept one began;
        # so with the engine's own traces that name no request (else they would pile up).
        old_steps = [step for step in model.steps if step.end_ns < horizon]
        gone.update(span.trace_id for step in old_steps for span in step.spans)
        foreign = [members for members in model.foreign_traces if members and max(map(_end, members)) < horizon]
        gone.update(members[0].trace_id for members in foreign)
        with self._lock:
            for trace_id in gone:
                self.traces.pop(trace_id, None)
                self._roots.pop(trace_id, None)
            self.stats.requests_dropped += len(dropped)
        for request in dropped:
            del model.requests[request.request_id]
        # The rest of the model without what left: what a build of the window would now give,
        # but for the kept steps' batches, which still name the requests that were dropped.
        # What left is freed a slice at a time (free_in_slices), its spans last.
        before = model.by_span_id, model.step_of_span, model.steps, model.foreign_traces, model.spans
        old, old_foreign = set(map(id, old_steps)), set(map(id, foreign))
        model.steps = [step for step in model.steps if id(step) not in old]
        for index, step in enumerate(model.steps):
            step.index = index
        model.foreign_traces = [members for members in model.foreign_traces if id(members) not in old_foreign]
        model.spans = [span for span in model.spans if span.trace_id not in gone]
        model.by_span_id = dict(zip(map(_span_id, model.spans), model.spans))
        model.step_of_span = {span.span_id: step for step in model.steps for span in step.spans}
        del dropped, old_steps, foreign, by_start, kept
        before[0].clear()  # indexes: what they point to is in the old lists (as in release_gradually)
        before[1].clear()
        free_in_slices(*before[2:])

    def notice(self) -> str:
        stats = self.stats
        text = f"{stats.spans_received:,} spans received"
        if stats.requests_dropped:
            text += f" · showing the last {self.limit} requests; {stats.requests_dropped:,} dropped"
        if stats.lines_skipped:
            text += f" · {stats.lines_skipped} unreadable export(s): {stats.last_error[:80]}"
        return text


def release_gradually(model: TraceModel) -> None:
    """Drop a model's references a slice at a time (call it off the UI thread): the indexes
    first (cleared at once: the spans and steps they point to are still in model.spans and
    model.steps, so nothing is freed), then the requests and steps, then the spans themselves,
    where most of the freeing happens."""
    model.by_span_id.clear()
    model.step_of_span.clear()
    free_in_slices(model.requests, model.steps, model.foreign_traces, model.spans)


def free_in_slices(*containers: dict | list, chunk: int = 256) -> None:
    """Empty each container (in order) a slice at a time.

    What it buys: a model's last reference dropped at once frees everything only it held (after
    a second at 15,000 spans/s, some 15,000 spans of requests that were dropped) in one C call
    that holds the GIL throughout: about 50 ms for 60,000 spans, the UI thread stalled with it.
    Emptied a slice at a time, the GIL can pass to the UI thread between slices."""
    for items in containers:
        if isinstance(items, list):
            while items:
                del items[-chunk:]
        else:
            while items:
                for _ in range(min(chunk // 16, len(items))):  # a request frees its list of spans with it
                    items.popitem()


def _joins(members: list[Span], ids: set[str]) -> bool:
    """Whether a trace joins the request of one of `ids` (as tracer.tui.grouping joins it: the
    first id it carries, ours, else an engine's native key; vLLM's internal id by its external)."""
    for span in members:
        attributes = span.attributes
        if REQUEST_ID in attributes:
            return str(attributes[REQUEST_ID]) in ids or str(attributes.get(EXTERNAL_ID)) in ids
    for span in members:
        for key in NATIVE_REQUEST_ID_KEYS:
            if key in span.attributes:
                return str(span.attributes[key]) in ids
    return False
