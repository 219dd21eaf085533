"""How one hooked call becomes one span: which trace it joins, its links and attributes.

Trace shape (the same for all engines):
- one trace per request, rooted at http.request when there is an HTTP hop (a W3C traceparent
  in the request is honoured) and at engine.enqueue otherwise. The root's SpanContext is kept
  in a request-id registry, so the request's later spans (kv.match_prefix, kv.allocate,
  kv.free, scheduler.preempt, detokenize) join that trace wherever they happen, with a link to
  the engine-step span that was running at the time;
- one trace per engine step, rooted at engine.step; schedule / execute / forward / sample /
  update nest under it. The step span and the scheduler.schedule span carry a link to every
  request in the batch plus the batch composition (servetrace.batch.*).
A hop called while a span of the same hop is open (EngineCore.add_request calling
Scheduler.add_request) does not open a second span.
"""
from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tracer import otel

logger = logging.getLogger(__name__)

REQUEST_ID = "gen_ai.request.id"
BATCH_REQUEST_IDS = "servetrace.batch.request_ids"
BATCH_PREFIX = "servetrace.batch."
LINK_KIND = "servetrace.link"  # "request": to a request in the batch; "step": to the step that was running
# Extractor control keys (not attributes): a W3C traceparent to parent the span on; more ids
# naming the same request (vLLM's internal id beside the external one).
TRACEPARENT = "_traceparent"
ALIASES = "_aliases"
GPU_FORWARD_MS = "servetrace.gpu.forward_ms"
# A span of these hops that carries a request id becomes that request's trace root (first wins).
ROOT_HOPS = ("http.request", "request.render", "engine.enqueue")

Extractor = Callable[..., Mapping[str, Any]]
_propagator = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class HopCall:
    """What the wrapper of one target knows statically."""

    hop: str
    engine: str
    scope: str
    target: str
    before: Extractor | None = None  # (args: dict) -> attributes
    after: Extractor | None = None  # (args: dict, result) -> attributes
    cuda_timed: bool = False


class RequestRegistry:
    """request id -> SpanContext of the request's root span (bounded: oldest dropped first)."""

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._contexts: OrderedDict[str, SpanContext] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, request_id: str) -> SpanContext | None:
        return self._contexts.get(request_id)

    def register(self, request_id: str, span_context: SpanContext) -> None:
        with self._lock:
            if request_id in self._contexts:
                return
            self._contexts[request_id] = span_context
            while len(self._contexts) > self.max_size:
                self._contexts.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._contexts.clear()

    def __len__(self) -> int:
        return len(self._contexts)


registry = RequestRegistry()

# (hop, scope, request root) of the innermost servetrace span open in this thread / task.
_open_hop: contextvars.ContextVar[tuple[str, str, SpanContext | None] | None] = contextvars.ContextVar("servetrace_open_hop", default=None)
# A request.render span that started a trace before its request had an id (the offline path:
# render, then add_request): the next engine.enqueue in this thread / task joins its trace.
_unclaimed_render: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar("servetrace_unclaimed_render", default=None)
# The innermost open engine.step span: scheduler.schedule copies the batch onto it.
_open_step: contextvars.ContextVar[Any] = contextvars.ContextVar("servetrace_open_step", default=None)

_warned: set[tuple[str, str, str]] = set()


def _run_extractor(call: HopCall, phase: str, fn: Extractor | None, *args: Any) -> dict[str, Any]:
    if fn is None:
        return {}
    try:
        return dict(fn(*args) or {})
    except Exception:  # an extractor must never break the engine
        key = (call.engine, call.hop, phase)
        if key not in _warned:
            _warned.add(key)
            logger.warning("servetrace: %s extractor for %s (%s) failed; continuing without its attributes",
                           phase, call.hop, call.engine, exc_info=True)
        return {}


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    clean = {}
    for key, value in attributes.items():
        if value is None or key.startswith("_"):
            continue
        if isinstance(value, (set, frozenset, tuple)):
            value = list(value)
        if isinstance(value, list):
            value = [v if isinstance(v, (str, bool, int, float)) else str(v) for v in value]
        elif not isinstance(value, (str, bool, int, float)):
            value = str(value)
        clean[key] = value
    return clean


@dataclass
class OpenSpan:
    call: HopCall
    span: Any
    tokens: tuple | None
    attributes: dict[str, Any]
    gpu_events: tuple | None = None
    root: SpanContext | None = None  # the request's trace root this span hangs under (or itself)
    started_trace: bool = False


def _cuda_events() -> tuple | None:
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    return start, end


def begin(call: HopCall, args: dict[str, Any]) -> OpenSpan | None:
    """Open the span for one call (None: tracing is off, or the same hop is already open)."""
    tracer = otel.active_tracer()
    if tracer is None:
        return None
    open_hop = _open_hop.get()
    if open_hop is not None and open_hop[0] == call.hop:
        return None
    attributes = _run_extractor(call, "before", call.before, args)
    current = trace.get_current_span().get_span_context()
    parent: otel_context.Context | None = None  # None: the current context
    links: list[Link] = []
    root: SpanContext | None = None
    if call.hop == "engine.step":
        parent = otel_context.Context()
    elif call.scope == "request":
        request_id = attributes.get(REQUEST_ID)
        root = registry.get(str(request_id)) if request_id is not None else None
        traceparent = attributes.get(TRACEPARENT)
        if root is None and call.hop == "engine.enqueue" and not current.is_valid:
            root = _unclaimed_render.get()
            if root is not None:
                _unclaimed_render.set(None)
        if root is not None:
            parent = trace.set_span_in_context(NonRecordingSpan(root))
        elif traceparent:
            parent = _propagator.extract({"traceparent": traceparent})
        elif open_hop is not None and open_hop[1] == "step":
            parent = otel_context.Context()  # a request's span does not belong to the step's trace
        if parent is not None and current.is_valid:
            linked_trace = root.trace_id if root is not None else None
            if linked_trace != current.trace_id:
                links.append(Link(current, {LINK_KIND: "step"}))
    kind = SpanKind.SERVER if call.hop == "http.request" else SpanKind.INTERNAL
    span = tracer.start_span(call.hop, context=parent, kind=kind, links=links, attributes=_clean(attributes))
    open_span = OpenSpan(call, span, None, attributes)
    if root is None and parent is None and open_hop is not None and open_hop[1] == "request":
        root = open_hop[2]  # nested in another span of the same request (enqueue inside http.request)
    open_span.root = root if call.scope == "request" and root is not None else span.get_span_context()
    open_span.started_trace = not span.parent
    if call.hop in ROOT_HOPS and attributes.get(REQUEST_ID) is not None:
        registry.register(str(attributes[REQUEST_ID]), open_span.root)
    activate(open_span)
    if call.cuda_timed:
        open_span.gpu_events = _cuda_events()
    return open_span


def activate(open_span: OpenSpan) -> None:
    """Make the span current (a generator's span is current only while the generator runs)."""
    span = open_span.span
    open_span.tokens = (
        otel_context.attach(trace.set_span_in_context(span)),
        _open_hop.set((open_span.call.hop, open_span.call.scope, open_span.root)),
        _open_step.set(span) if open_span.call.hop == "engine.step" else None,
    )


def deactivate(open_span: OpenSpan) -> None:
    if open_span.tokens is None:
        return
    span_context_token, hop_token, step_token = open_span.tokens
    open_span.tokens = None
    if step_token is not None:
        _open_step.reset(step_token)
    _open_hop.reset(hop_token)
    otel_context.detach(span_context_token)


def end(open_span: OpenSpan, args: dict[str, Any], result: Any = None, error: BaseException | None = None) -> None:
    """Close the span: after-call attributes, links to the batch, error status."""
    end_ns = time.time_ns()
    call, span = open_span.call, open_span.span
    deactivate(open_span)
    try:
        if error is None:
            after = _run_extractor(call, "after", call.after, args, result)
            if after:
                span.set_attributes(_clean(after))
                open_span.attributes.update(after)
        else:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        attributes = open_span.attributes
        batch = attributes.get(BATCH_REQUEST_IDS)
        if batch:
            _link_batch(span, batch)
            step_span = _open_step.get()
            if step_span is not None and step_span is not span and call.hop == "scheduler.schedule":
                _link_batch(step_span, batch)
                step_span.set_attributes(_clean({k: v for k, v in attributes.items() if k.startswith(BATCH_PREFIX)}))
        if call.hop in ROOT_HOPS and attributes.get(REQUEST_ID) is not None:
            registry.register(str(attributes[REQUEST_ID]), open_span.root)
            for alias in attributes.get(ALIASES) or ():
                registry.register(str(alias), open_span.root)
        elif call.hop == "request.render" and open_span.started_trace and error is None:
            _unclaimed_render.set(span.get_span_context())
    except Exception:  # pragma: no cover - bookkeeping must not break the engine either
        logger.warning("servetrace: closing a %s span failed", call.hop, exc_info=True)
    if open_span.gpu_events is not None and error is None:
        start, stop = open_span.gpu_events
        stop.record()
        _pending_gpu.append((span, start, stop, end_ns))
    else:
        span.end(end_time=end_ns)
    if _pending_gpu and call.scope == "step":
        drain_pending(wait=False)


def _link_batch(span: Any, request_ids: list) -> None:
    for request_id in request_ids:
        root = registry.get(str(request_id))
        if root is not None:
            span.add_link(root, {LINK_KIND: "request", REQUEST_ID: str(request_id)})


# GPU-timed spans end when their CUDA events have completed, without a synchronize on the hot path.
_pending_gpu: deque = deque()


def drain_pending(wait: bool = False) -> None:
    """End GPU-timed spans whose end event has completed (all of them when wait)."""
    while _pending_gpu:
        span, start, stop, end_ns = _pending_gpu[0]
        try:
            if wait:
                stop.synchronize()
            elif not stop.query():
                return
            span.set_attribute(GPU_FORWARD_MS, float(start.elapsed_time(stop)))
        except Exception:  # pragma: no cover - a lost CUDA context must not leak spans
            pass
        _pending_gpu.popleft()
        span.end(end_time=end_ns)
