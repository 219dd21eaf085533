"""Starting an OpenTelemetry SDK span without the SDK re-cleaning what servetrace has cleaned already.

Why (profiled on bench/trace_overhead.py, bench/results/span_cost.md): Tracer.start_span,
Span.add_link and BoundedAttributes were about half of the hooks' CPU on the engine thread. Every
span's attributes went through the SDK's recursive per-value cleaning (a tuple per list, element by
element) after hop_call.clean_attributes had made them valid OTel values, and every link got a BoundedAttributes
of its own (a lock, a copy, cleaning) although servetrace's link attributes repeat: the same
{link kind, request id} on the links of every step the request runs in (48 links a step at 16
requests).

What stays the SDK's: the span is the SDK's own _Span (so span processors' on_start / on_end, the
OTLP exporter, the provider's sampler, id generator, span limits and tracer metrics all see what
Tracer.start_span would give them); only its constructor takes the attributes and the links' frozen
attribute mappings as they are (the fields every span of a tracer shares set from one per-tracer
template), and its end hands the processors the ended span itself rather than a copy (:926-941).
That constructor mirrors the pinned SDK's _Span.__init__
(opentelemetry-sdk 1.45.2, opentelemetry/sdk/trace/__init__.py:771-830) and Tracer.start_span
(:1138-1218); tests/test_lean_span.py checks that the two export the same spans. On any other SDK
version, or with span limits that cut values, start_span is the SDK's own.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.version import __version__ as SDK_VERSION
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

LEAN_SDK_VERSIONS = frozenset({"1.45.2"})  # the versions whose _Span / Tracer.start_span this mirrors

_MAX_FROZEN = 8192  # distinct link attribute mappings kept (a few per request in flight)
_frozen: dict[tuple, BoundedAttributes] = {}
_frozen_lock = threading.Lock()


def frozen_attributes(items: tuple[tuple[str, Any], ...]) -> BoundedAttributes:
    """The one immutable attribute mapping for these (key, value) pairs (str values), shared by every
    link that carries them. Made with the SDK's limits as configured by the environment (what our
    TracerProvider uses); a lean span whose limits differ re-wraps them."""
    frozen = _frozen.get(items)
    if frozen is None:
        limits = _default_limits()
        frozen = BoundedAttributes(limits.max_link_attributes, dict(items), immutable=True,
                                   max_value_len=limits.max_attribute_length)
        with _frozen_lock:
            if len(_frozen) >= _MAX_FROZEN:
                _frozen.clear()  # finished requests' mappings go; live ones are made again once
            _frozen[items] = frozen
    return frozen


_MAX_CHECKED = 16384  # links no span checks again (a few per request in flight)
_checked: dict[int, Link] = {}  # id(link) -> the link (kept alive here, so its id is not reused meanwhile)


def checked_link(link: Link) -> Link:
    """`link`, marked as one no span needs to check again: its context valid and its attributes frozen
    (frozen_attributes), both fixed for the Link object's life. A step's spans link to its requests
    through the same Link objects step after step (request_links): checked once, not on every span
    (the checks were a fifth of the CPU of the step's and schedule's ends, cProfile)."""
    attributes = link.attributes
    if isinstance(attributes, BoundedAttributes) and attributes._immutable is True and _keep(link):
        with _frozen_lock:
            if len(_checked) >= _MAX_CHECKED:
                _checked.clear()  # finished requests' links go; live ones are checked on each span again
            _checked[id(link)] = link
    return link


_UNSET = Status(StatusCode.UNSET)  # a new span's status (the SDK's ReadableSpan default)
_limits: list[SpanLimits | None] = [None]


def _default_limits() -> SpanLimits:
    if _limits[0] is None:
        _limits[0] = SpanLimits()
    return _limits[0]


_lean_tracer: list[Any] = [None, None]  # the tracer last asked about, and its _shared_fields (None: not lean)


def _shared_fields(tracer: Any) -> dict[str, Any] | None:
    """The span fields _Span.__init__ sets from the tracer alone (the same for all its spans), or None
    where the lean path does not apply. Asked per span: worked out once per tracer (a tracer's
    resource, scope, sampler, limits and processor are fixed when the provider makes it)."""
    if _lean_tracer[0] is not tracer:
        shared = None
        if lean_supported(tracer):
            shared = {"_resource": tracer.resource, "_instrumentation_info": tracer.instrumentation_info,
                      "_instrumentation_scope": tracer._instrumentation_scope, "_start_time": None, "_end_time": None,
                      "_status": _UNSET, "_sampler": tracer.sampler, "_trace_config": None, "_record_exception": True,
                      "_set_status_on_exception": True, "_span_processor": tracer.span_processor,
                      "_limits": tracer._span_limits}
        _lean_tracer[:] = [tracer, shared]
    return _lean_tracer[1]


def lean_supported(tracer: Any) -> bool:
    """The lean path applies: the pinned SDK's Tracer, no limit that would cut a value or drop an
    attribute of ours, and the same link limits the frozen mappings were made with."""
    if SDK_VERSION not in LEAN_SDK_VERSIONS or type(tracer) is not sdk_trace.Tracer:
        return False
    limits = getattr(tracer, "_span_limits", None)
    default = _default_limits()
    return (limits is not None and limits.max_span_attribute_length is None and limits.max_attribute_length is None
            and limits.max_link_attributes == default.max_link_attributes)


class LeanSpan(sdk_trace._Span):
    """The SDK's span, built from attributes that are valid OTel values already (hop_call.clean_attributes) and
    links whose attributes are frozen BoundedAttributes (frozen_attributes)."""

    def __init__(self, name: str, context: SpanContext, parent: SpanContext | None, shared: dict[str, Any],
                 attributes: Mapping[str, Any], links: Sequence[Link], kind: trace_api.SpanKind,
                 record_end_metrics: Any) -> None:
        # The fields of the SDK's _Span.__init__ (1.45.2), set without re-cleaning: those every span
        # of its tracer shares in one update (_shared_fields), then this span's own.
        fields = self.__dict__
        fields.update(shared)
        limits = shared["_limits"]
        bounded = BoundedAttributes(limits.max_span_attributes, None, immutable=False, max_value_len=None)
        if limits.max_span_attributes is None or len(attributes) <= limits.max_span_attributes:
            bounded._dict.update(attributes)
        elif attributes:
            bounded._set_items(attributes)  # over the limit: the SDK's own dropping
        kept = BoundedList(limits.max_links)
        if links:
            checked = _checked
            kept.extend([link for link in links if checked.get(id(link)) is link or _keep(link)])  # BoundedList.from_seq, without its tuple copy
        fields.update(_name=name, _context=context, _parent=parent, _kind=kind, _lock=threading.Lock(),
                      _attributes=bounded, _events=BoundedList(limits.max_events), _links=kept,
                      _record_end_metrics=record_end_metrics)

    def _readable_span(self) -> ReadableSpan:
        """What end() hands the span processors: this span itself, not the SDK's ReadableSpan copy of
        it (1.45.2's _readable_span: a new ReadableSpan of the same field objects, the attributes,
        events and links shared, not copied). An ended span's name, status, attributes, events and
        links no longer change (the SDK refuses and warns), so processors read the same values; the
        copy was ~3% of the hooks' CPU in a cProfile of bench/trace_overhead.py's workload."""
        return self

    def start_ended(self, start_time: int, end_time: int, parent_context: Any) -> None:
        """start(start_time, parent_context), then end(end_time), for a span no other thread can hold yet:
        the steps of the SDK's _Span.start and _Span.end (1.45.2, :943-973) without their locks and
        their checks that neither time is set."""
        self._start_time = start_time
        processor = self._span_processor
        processor.on_start(self, parent_context=parent_context)
        if self._end_time is not None:  # a processor ended it in on_start: the SDK's end warns, as it would
            self.end(end_time=end_time)
            return
        self._end_time = end_time
        self._attributes._immutable = True
        if self._record_end_metrics:
            self._record_end_metrics()
        processor._on_ending(self)
        processor.on_end(self)  # _readable_span(): the span itself

    def set_clean_attributes(self, attributes: Mapping[str, Any]) -> None:
        """set_attributes for values hop_call.clean_attributes made (no re-cleaning while there is room)."""
        bounded = self._attributes
        with self._lock:
            if self._end_time is not None or bounded._immutable:
                pass  # ended: the SDK's set_attributes below warns as it always does
            elif self._limits.max_span_attributes is None or len(bounded) + len(attributes) <= self._limits.max_span_attributes:
                bounded._dict.update(attributes)
                return
        self.set_attributes(attributes)

    def add_link(self, context: SpanContext, attributes: Any = None) -> None:
        if not isinstance(attributes, BoundedAttributes) or attributes._immutable is not True:
            super().add_link(context, attributes)
            return
        if sdk_trace._is_valid_link(context, attributes):
            self._add_link(Link(context=context, attributes=attributes))


    def add_frozen_links(self, links: Sequence[Link]) -> None:
        """add_link(link.context, link.attributes) for each link, in order, under one lock: links whose
        attributes are frozen (frozen_attributes) are kept as they are, as add_link keeps them."""
        checked = _checked
        if all(checked.get(id(link)) is link for link in links):
            kept = links  # checked_link: valid, frozen
        elif not all(isinstance(link.attributes, BoundedAttributes) and link.attributes._immutable is True for link in links):
            for link in links:
                self.add_link(link.context, link.attributes)
            return
        else:
            kept = [link for link in links if sdk_trace._is_valid_link(link.context, link.attributes)]
        with self._lock:
            if self._end_time is None:
                self._links.extend(kept)
                return
        sdk_trace.logger.warning("Tried calling %s on an ended span.", "_add_link")


def _keep(link: Link) -> bool:
    if not link or not sdk_trace._is_valid_link(link.context, link.attributes):
        return False
    if not isinstance(link.attributes, BoundedAttributes):
        limits = _default_limits()
        link._attributes = BoundedAttributes(limits.max_link_attributes, link.attributes,
                                             max_value_len=limits.max_attribute_length, immutable=True)
    return True


def reserve_context(tracer: Any, parent: SpanContext | None) -> SpanContext | None:
    """The SpanContext that start_span(span_context=...) will give a span under `parent` (None or an
    invalid one: a new trace), made now, before the span: its ids drawn as start_span draws them, its
    flags and trace state as start_span sets them. None where that is not known in advance: not the
    lean path, tracing off, or a sampler other than ALWAYS_ON (another decides per span, with its
    attributes and links). Lets a span that is created late be linked to and parented at once."""
    if _shared_fields(tracer) is None or tracer.sampler is not ALWAYS_ON or not tracer._is_enabled():
        return None
    return _always_on_context(tracer, parent if parent is not None and parent.is_valid else None)


def _always_on_context(tracer: Any, parent: SpanContext | None) -> SpanContext:
    """A sampled span's context under `parent` (None: a new trace), as the SDK makes it under ALWAYS_ON:
    what its should_sample returns (StaticSampler, sampling.py:215-229) is its decision, the attributes as
    given, and the trace state of the parent, which _get_parent_trace_state (:482-488) reads off the
    context's span context just as start_span reads `parent`. The trace id is drawn before the span id."""
    if parent is None:
        trace_id, trace_state, random = tracer.id_generator.generate_trace_id(), None, tracer.id_generator.is_trace_id_random()
    else:
        trace_id, trace_state, random = parent.trace_id, parent.trace_state, parent.trace_flags.random_trace_id
    flags = TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID if random else TraceFlags.SAMPLED
    return SpanContext(trace_id, tracer.id_generator.generate_span_id(), is_remote=False,
                       trace_flags=TraceFlags(flags), trace_state=trace_state)


def start_span(tracer: Any, name: str, context: Any, kind: trace_api.SpanKind, attributes: dict[str, Any],
               links: Sequence[Link], start_time: int, end_time: int | None = None,
               span_context: SpanContext | None = None) -> Any:
    """tracer.start_span(name, context, kind, attributes, links, start_time) for attributes made by
    hop_call.clean_attributes; lean where lean_supported(tracer). With end_time: then .end(end_time), at
    once (a step's part, created at the step's end). span_context: what reserve_context(tracer, the
    context's span context) gave for this span earlier."""
    shared = _shared_fields(tracer)
    if shared is None:
        span = tracer.start_span(name, context=context, kind=kind, attributes=attributes, links=links, start_time=start_time)
        if end_time is not None:
            span.end(end_time=end_time)
        return span
    # The steps of the SDK's Tracer.start_span (1.45.2), with LeanSpan for _Span.
    parent = trace_api.get_current_span(context).get_span_context()
    if not tracer._is_enabled():
        return trace_api.NonRecordingSpan(context=parent)
    if parent is None or not parent.is_valid:
        parent = None
    if span_context is not None or tracer.sampler is ALWAYS_ON:  # reserved: reserve_context made it so
        decision = Decision.RECORD_AND_SAMPLE
        span_context = span_context or _always_on_context(tracer, parent)
    else:
        trace_id = tracer.id_generator.generate_trace_id() if parent is None else parent.trace_id
        result = tracer.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        decision, trace_state = result.decision, result.trace_state
        if len(result.attributes) != len(attributes):  # a sampler added its own: those get the SDK's cleaning
            attributes = dict(BoundedAttributes(None, result.attributes))
        flags = TraceFlags.SAMPLED if decision.is_sampled() else TraceFlags.DEFAULT
        if tracer.id_generator.is_trace_id_random() if parent is None else parent.trace_flags.random_trace_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(trace_id, tracer.id_generator.generate_span_id(), is_remote=False,
                                   trace_flags=TraceFlags(flags), trace_state=trace_state)
    record_end_metrics = tracer._tracer_metrics.start_span(parent, decision)
    if not decision.is_recording():
        return trace_api.NonRecordingSpan(context=span_context)
    span = LeanSpan(name, span_context, parent, shared, attributes, links, kind, record_end_metrics)
    if end_time is None:
        span.start(start_time=start_time, parent_context=context)
    else:
        span.start_ended(start_time, end_time, context)
    return span


def set_attributes(span: Any, attributes: Mapping[str, Any]) -> None:
    """span.set_attributes(attributes) for attributes made by hop_call.clean_attributes."""
    if isinstance(span, LeanSpan):
        span.set_clean_attributes(attributes)
    else:
        span.set_attributes(attributes)


def add_links(span: Any, links: Sequence[Link]) -> None:
    """span.add_link(link.context, link.attributes) for each of `links`."""
    if isinstance(span, LeanSpan):
        span.add_frozen_links(links)
    else:
        for link in links:
            span.add_link(link.context, link.attributes)
