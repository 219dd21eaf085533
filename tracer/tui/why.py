"""The explorer's "why" view, minus the drawing: a request's time split and prefix-cache miss, as
`servetrace explain` computes them (tracer.traces.request_steps / explain_time / explain_cache).

No Textual here. The explorer's spans (tracer.tui.records.Span) read like SpanRecords, so the
trace readers take the model's own span list: nothing is read from the file again. The timeline
(one pass over every span) is built once per model, on the first request asked about; each
request's explanation is kept for the last MAX_EXPLAINED requests asked about (the view is opened
on a handful of requests, and a long request's step notes run to thousands).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Protocol

from tracer.traces.explain_cache import CacheMiss, explain_cache, reason_meaning
from tracer.traces.explain_time import TimeSplit, split_time
from tracer.traces.request_steps import NOT_EXPLAINED, EngineTimeline, RequestLife, read_timeline, unexplained_engines
from tracer.traces.trace_file import SpanRecord

MAX_EXPLAINED = 32


# What is read of tracer.tui.model's TraceModel and Request (the model holds a WhyIndex: importing
# the model here would make a cycle).
class ModelLike(Protocol):
    @property
    def spans(self) -> Sequence[SpanRecord]: ...


class RequestLike(Protocol):
    @property
    def request_id(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def ids(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class Why:
    """One request explained, or why it cannot be (`unexplained`, a sentence for the user)."""

    request: str  # the id the explorer shows it by
    split: TimeSplit | None = None
    cache: CacheMiss | None = None
    unexplained: str = ""

    @property
    def reason_meaning(self) -> str:
        return reason_meaning(self.cache) if self.cache is not None else ""


class WhyIndex:
    """A model's timeline and its recent explanations. Safe to ask from a worker thread while the
    screen's thread asks too: the timeline is built once, under a lock."""

    def __init__(self, model: ModelLike) -> None:
        # A copy of the span list (pointers, not spans), taken where the index is made: the UI
        # thread, when the view opens (tracer.tui.why_screen). A live window's model, once
        # replaced, is emptied in place off that thread (tracer.tui.live_window.release_gradually),
        # and a timeline read from it meanwhile would miss spans.
        self.spans = list(model.spans)
        self._lock = threading.Lock()
        self._timeline: EngineTimeline | None = None
        self._engines: set[str] | None = None
        self._explained: OrderedDict[str, Why] = OrderedDict()

    def timeline(self) -> EngineTimeline:
        with self._lock:
            if self._timeline is None:
                self._timeline = read_timeline(self.spans)
            return self._timeline

    def unexplained_engines(self) -> set[str]:
        with self._lock:
            if self._engines is None:
                self._engines = unexplained_engines(self.spans)
            return self._engines

    def life_of(self, request: RequestLike) -> RequestLife | None:
        """The timeline's request for the explorer's row: by its id, else by any id it is known by
        (the row folds vLLM's internal id and the client's X-Request-Id into one)."""
        timeline = self.timeline()
        life = timeline.find(request.request_id)
        if life is not None:
            return life
        return next((life for rid in sorted(request.ids) if (life := timeline.find(rid)) is not None), None)

    def explain(self, request: RequestLike) -> Why:
        with self._lock:
            cached = self._explained.get(request.request_id)
            if cached is not None:
                self._explained.move_to_end(request.request_id)
                return cached
        why = self._explain(request)
        with self._lock:
            self._explained[request.request_id] = why
            while len(self._explained) > MAX_EXPLAINED:
                self._explained.popitem(last=False)
        return why

    def _explain(self, request: RequestLike) -> Why:
        name = request.label
        engines = self.unexplained_engines()
        if engines:
            return Why(name, unexplained=f"this is a trace of {', '.join(sorted(engines))}: {NOT_EXPLAINED}.")
        life = self.life_of(request)
        if life is None:
            return Why(name, unexplained="the trace's request readers (tracer.traces.shape) find no request with this id")
        timeline = self.timeline()
        return Why(name, split_time(timeline, life), explain_cache(timeline, life))
