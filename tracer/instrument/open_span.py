"""A hooked call in progress, and its span, created only when something needs it (tracer.instrument.spans
opens and closes these): most calls of some hops end dropped, and a step's spans wait for its end or
later (tracer.instrument.step_parts), their ids drawn ahead where children or links need them first."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind

from tracer.instrument import lean_span
from tracer.instrument.hop_call import HopCall, clean_attributes as _clean
from tracer.instrument.request_join import join_request as _join_request


@dataclass(slots=True)  # made for every hooked call (most kv.allocate calls end dropped): slots make and read it faster
class OpenSpan:
    """A call in progress. The SDK span is created lazily (with the call's start time): a span
    an extractor drops (DROP) that no child needed costs no SDK work at all."""

    call: HopCall
    tracer: Any
    attributes: dict[str, Any]
    start_ns: int
    parent: otel_context.Context | SpanContext | None  # None: under `enclosing`; a SpanContext: under that (remote) root
    enclosing: "OpenSpan | None"
    links: list[Link]
    root: SpanContext | None = None  # the request root this span hangs under (itself if it is one)
    span: Any = None
    tokens: tuple | None = None
    gpu_events: tuple | None = None
    started_trace: bool = False
    deferred: list | tuple | None = None  # on an engine.step: (span, end ns) of its parts ended, created at its end; () once it closed
    awaiting: str | None = None  # an awaits_root hop's request id whose root was not registered when it began
    parent_context: otel_context.Context | None = None  # as_parent's, once made
    thread: int = 0  # on an engine.step: the thread it began on
    reserved: SpanContext | None = None  # its span's context, drawn before the span (span_context)
    batch_attributes: dict[str, Any] | None = None  # on an engine.step not created yet: its schedule's batch
    prepared: bool = False  # a held schedule: its links to the batch made already

    def as_parent(self) -> otel_context.Context:
        """The context its children start under: made once and shared by them (a step's schedule,
        execute, update and detokenize; an execute's forward and sample), not once per child."""
        if self.parent_context is None:
            if self.span is None and self.span_context(create=False) is not None:
                self.parent_context = trace.set_span_in_context(NonRecordingSpan(self.reserved))
            else:
                self.parent_context = trace.set_span_in_context(self.materialize())
        return self.parent_context

    def span_context(self, create: bool = True) -> SpanContext | None:
        """Its span's context, without creating the span where the ids can be drawn first
        (lean_span.reserve_context: a step, its schedule and its parts are created together, later,
        tracer.instrument.step_parts); else the created span's (create=False: None)."""
        if self.span is not None:
            return self.span.get_span_context()
        if self.reserved is None and self.parent is not _UNJOINED:
            parent = self.parent
            if isinstance(parent, SpanContext):
                above: SpanContext | None = parent
            elif parent is not None:
                above = trace.get_current_span(parent).get_span_context()
            elif self.enclosing is not None:
                above = self.enclosing.span_context(create=False)
                if above is None:
                    return self.materialize().get_span_context() if create else None
            else:
                above = trace.get_current_span().get_span_context()
            self.reserved = lean_span.reserve_context(self.tracer, above)
        if self.reserved is not None:
            return self.reserved
        return self.materialize().get_span_context() if create else None

    def materialize(self, end_ns: int | None = None) -> Any:
        """Its SDK span, created now if it was not (with end_ns: ended there, created ended if it was not)."""
        if self.span is not None:
            if end_ns is not None:
                self.span.end(end_time=end_ns)
            return self.span
        if self.parent is _UNJOINED:
            _join(self)
        parent = self.parent
        if isinstance(parent, SpanContext):
            parent = trace.set_span_in_context(NonRecordingSpan(parent))
        elif parent is None and self.enclosing is not None:
            parent = self.enclosing.as_parent()
        kind = SpanKind.SERVER if "entrypoint" in self.call.roles else SpanKind.INTERNAL
        attributes = _clean(self.attributes)
        if self.batch_attributes:  # a step created before its end: its schedule's batch, set after what it began with
            attributes.update(_clean(self.batch_attributes))
            self.batch_attributes = None
        self.span = lean_span.start_span(self.tracer, self.call.hop, parent, kind, attributes,
                                         self.links, self.start_ns, end_ns, self.reserved)
        if self.root is None:
            self.root = self.span.get_span_context()
        self.started_trace = self.span.parent is None
        return self.span


_UNJOINED = object()  # OpenSpan.parent of a span that joins its trace late (HopCall.joins_late), until it does
_NO_LINKS: list = []  # its links until then (never appended to: _join replaces it)


def _join(open_span: "OpenSpan") -> None:
    """A late-joining span (HopCall.joins_late) that is written after all: look its trace up now."""
    open_span.parent, open_span.root, open_span.links, _ = _join_request(open_span.call, open_span.attributes,
                                                                         open_span.enclosing)
