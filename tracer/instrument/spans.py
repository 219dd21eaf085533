"""How one hooked call becomes one span: which trace it joins, its links and attributes (which request's
trace a request-scope span joins: tracer.instrument.request_join).

Trace shape (the same for all engines):
- one trace per request, rooted at http.request when there is an HTTP hop (a W3C traceparent
  in the request is honoured; a server that names the request inside the handler gets the id
  handed up from the engine.enqueue nested in it) and at engine.enqueue otherwise. The root's SpanContext is kept
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
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tracer.instrument import gpu_timing, lean_span, otel, overlap, request_links, step_parts
from tracer.instrument.request_join import join_request as _join_request, name_enclosing_http_request as _name_enclosing_http_request
from tracer.instrument.request_join import steps_emitted as _steps_emitted, unclaimed_render as _unclaimed_render
from tracer.instrument.hop_call import HopCall, clean_attributes as _clean, run_extractor as _run_extractor, warn_once
from tracer.instrument.open_span import _NO_LINKS, _UNJOINED, OpenSpan, _join
from tracer.instrument.registry import registry

logger = logging.getLogger(__name__)

from tracer.traces.schema import (  # noqa: F401  (ALIASES, DROP, TRACEPARENT: re-exported for the extractors)
    ENGINE_MODE, ALIASES, BATCH_IDS, BATCH_PREFIX, EXTRACTOR_ERROR, LINK_REPORTED, REPORTED_ID_KEYS, CARRIER_KEY, DROP, EXTERNAL_ID, HTTP_STATUS,
    LINK_REQUEST, LINK_WAITING, NUM_RUNNING, NUM_WAITING, REQUEST_ID, TRACEPARENT, WAITING_HEAD,
)



_propagator = TraceContextTextMapPropagator()


# The innermost servetrace span open in this thread / task, and the innermost engine.step.
_open: contextvars.ContextVar["OpenSpan | None"] = contextvars.ContextVar("servetrace_open", default=None)
_open_step: contextvars.ContextVar["OpenSpan | None"] = contextvars.ContextVar("servetrace_open_step", default=None)
# The step context another process sent with the work it handed over (vLLM's EngineCore -> Worker):
# step-scope spans of this process with nothing open above them nest there.
_remote_step: list[otel_context.Context | None] = [None]
# The step the last unenclosed step opener began: targets marked part_of_step in the catalog join it
# (SGLang's event loop calls get_next_batch_to_run, run_batch and process_batch_result in turn).
_opened_step: list["OpenSpan | None"] = [None]


def begin(call: HopCall, args: dict[str, Any]) -> OpenSpan | None:
    """Open the span for one call (None: tracing is off, or the same hop is already open)."""
    tracer = otel.active_tracer()
    if tracer is None:
        return None
    enclosing = _open.get()
    if enclosing is not None and enclosing.call.hop == call.hop:
        return None
    if call.skip_if is not None and _skipped(call, args):
        return None
    start_ns = time.time_ns()
    attributes = _run_extractor(call, "before", call.before, args)
    if call.mode:
        attributes[ENGINE_MODE] = call.mode
    if call.joins_late and enclosing is not None:
        open_span = OpenSpan(call, tracer, attributes, start_ns, _UNJOINED, enclosing, _NO_LINKS)
        open_span.tokens = (_open.set(open_span), None)  # activate(); never a step root
        return open_span
    if call.step_part and enclosing is not None:  # what the general path below does for one, and no more
        open_span = OpenSpan(call, tracer, attributes, start_ns, None, enclosing, [])
        if "in_flight" in call.roles and not attributes.get(DROP):
            _start_in_flight(open_span)
        open_span.tokens = (_open.set(open_span), None)  # activate(); never a step root
        if call.cuda_timed:
            open_span.gpu_events = gpu_timing.start_events()
        return open_span
    parent: otel_context.Context | None = None
    links: list[Link] = []
    root: SpanContext | None = None
    roles = call.roles
    opens_step = False  # an unenclosed step opener that is not a step root: begins this process's current step
    awaiting: str | None = None
    if call.scope == "step" and enclosing is None and "startup" not in roles:
        traceparent = attributes.get(TRACEPARENT)
        if traceparent:
            parent = _remote_step[0] = _propagator.extract({"traceparent": traceparent})
        elif call.part_of_step and _opened_step[0] is not None:
            parent = _opened_step[0].as_parent()
        elif "step_opener" in roles and "step_root" not in roles:
            parent, opens_step = otel_context.Context(), True
        elif _remote_step[0] is not None and not trace.get_current_span().get_span_context().is_valid:
            parent = _remote_step[0]  # a later call of the same step (vLLM's sample_tokens RPC)
        elif "step_root" in roles:
            parent = otel_context.Context()
    elif "step_root" in roles or "startup" in roles:
        parent = otel_context.Context()
    elif call.scope == "request":
        parent, root, links, awaiting = _join_request(call, attributes, enclosing)
    if "step_opener" in roles and "step_root" not in roles:  # the schedule, not the step around it
        overlap.link_overlapped(links, attributes)
    open_span = OpenSpan(call, tracer, attributes, start_ns, parent, enclosing, links, root if call.scope == "request" else None,
                         awaiting=awaiting)
    if "in_flight" in roles and not attributes.get(DROP):
        _start_in_flight(open_span)
    if "step_root" in roles:
        open_span.thread = threading.get_ident()
    if "entrypoint" in roles:
        # Always the request's root, even before it knows its request id (a server assigns the
        # id inside the handler): the spans nested in it hang under it from the start.
        open_span.materialize()
    if "request_root" in roles and attributes.get(REQUEST_ID) is not None:
        open_span.materialize()
        registry.register(str(attributes[REQUEST_ID]), open_span.root)
    if opens_step:
        _opened_step[0] = open_span
    activate(open_span)
    if call.inject is not None and call.inject.before:
        _inject(open_span, args, None)
    if call.cuda_timed:
        open_span.gpu_events = gpu_timing.start_events()
    return open_span


def _start_in_flight(open_span: OpenSpan) -> None:
    """A model execution that another thread's step opener may link to while it runs is created at once,
    in its own thread, and registered (tracer.instrument.overlap). One that runs on the thread its step
    began on is not: no opener of this engine can begin before it returns (our synchronous step; vLLM's
    UniProcExecutor runs even a non-blocking execute_model in the calling thread,
    vllm/v1/executor/uniproc_executor.py:101-117 in 0.33.0), so it is a plain part of its step, created
    at the step's end (tracer.instrument.step_parts); SGLang 0.5.23's overlap loop too calls
    get_next_batch_to_run and run_batch in turn on one thread (sglang/srt/managers/scheduler.py:2061-2109).
    Our batch queue's model thread and grammar worker, and a vLLM Worker process (its step came from
    the EngineCore), create it at once."""
    step = _open_step.get()
    if step is not None and step.thread == threading.get_ident():
        return
    open_span.materialize()
    overlap.started(open_span)


def activate(open_span: OpenSpan) -> None:
    """Make the span the innermost open one (a generator's, only while the generator runs)."""
    open_span.tokens = (
        _open.set(open_span),
        _open_step.set(open_span) if "step_root" in open_span.call.roles else None,
    )


def deactivate(open_span: OpenSpan) -> None:
    if open_span.tokens is None:
        return
    open_token, step_token = open_span.tokens
    open_span.tokens = None
    if step_token is not None:
        _open_step.reset(step_token)
    _open.reset(open_token)


def end(open_span: OpenSpan, args: dict[str, Any], result: Any = None, error: BaseException | None = None) -> None:
    """Close the span: after-call attributes, links to the batch, error status."""
    end_ns = time.time_ns()
    deactivate(open_span)
    call = open_span.call
    if call.step_part and error is None and open_span.span is None and open_span.gpu_events is None:
        # A plain part of a step (HopCall.step_part): its after-extractor now, the rest at its step's end.
        # Nothing else here: right after a forward pass each function entered costs microseconds of CPU
        # (cold caches; a forward's end took 47 us with the rest of _close run here, by-hop thread_time).
        if call.after is not None:
            open_span.attributes.update(_run_extractor(call, "after", call.after, args, result))
        if not step_parts.defer(open_span, _open_step.get(), end_ns):
            _end_part_now(open_span, end_ns)  # no step open here, or it closed (the part ran on past it)
        return
    if "in_flight" in open_span.call.roles and open_span.span is not None:  # only a created one was registered
        overlap.ended(open_span)
    drop_if = open_span.call.drop_if
    if drop_if is not None and error is None and open_span.span is None and open_span.reserved is None \
            and open_span.awaiting is None:
        try:
            if drop_if(args, result):
                return  # uneventful, and no child needed the span: no after-extractor, no SDK work
        except Exception:  # the after-extractor below says what went wrong, on the span
            pass
    if open_span.awaiting is None or open_span.span is not None:
        return _close(open_span, args, result, error, end_ns)
    # An awaits_root span (our grammar compile, on its compile thread) begun before its request's root
    # was registered: the root is looked up again now; if the enqueue that submitted the compile has
    # not registered it yet, the span is written (its times, its after-call attributes read now) when it does.
    after = _run_extractor(open_span.call, "after", open_span.call.after, args, result) if error is None else {}

    def close(root: SpanContext | None) -> None:  # None: the registry was cleared first (its own trace)
        if root is not None:
            open_span.parent = open_span.root = root
        _close(open_span, args, result, error, end_ns, after)

    request_id, open_span.awaiting = open_span.awaiting, None
    root = registry.when_registered(request_id, close)
    if root is not None:
        close(root)


def _skipped(call: HopCall, args: dict[str, Any]) -> bool:
    try:
        return bool(call.skip_if(args))
    except Exception:  # a predicate that fails: the span is opened, as without one
        warn_once(call, "skip_if", "servetrace: skip_if for %s raised; the span is kept")
        return False


def _prepare_part(open_span: OpenSpan) -> bool:
    """What _close does for an ended step part before its span is created: its links to the batch it
    reports; False when it was uneventful (DROP: an empty step's execute), no span."""
    if open_span.prepared:
        return True
    attributes = open_span.attributes
    if attributes.get(DROP) and open_span.reserved is None:  # (a child's parent is written, uneventful or not)
        return False
    batch_links = _batch_links(open_span.call, attributes)
    if batch_links:
        open_span.links.extend(batch_links)
    return True


def _end_part_now(open_span: OpenSpan, end_ns: int) -> None:
    try:
        if _prepare_part(open_span):
            open_span.materialize(end_ns)
    except Exception:  # pragma: no cover - bookkeeping must not break the engine either
        logger.warning("servetrace: closing a %s span failed", open_span.call.hop, exc_info=True)
    gpu_timing.drain_pending(wait=False)


def _batch_links(call: HopCall, attributes: dict[str, Any]) -> list[Link]:
    """A span's links to the requests of the batch it carries and of those it reports (finished, preempted)."""
    batch = attributes.get(BATCH_IDS) or []
    reported = [rid for key in REPORTED_ID_KEYS for rid in (attributes.get(key) or ()) if rid not in batch]
    batch_links = request_links.to_requests(batch) + request_links.to_requests(list(dict.fromkeys(reported)), LINK_REPORTED)
    if not batch_links and "batch" in call.roles and attributes.get(WAITING_HEAD) is not None:
        # Scheduled nobody: the step belongs to the head it left waiting (else its trace links nowhere).
        batch_links = request_links.to_requests([attributes[WAITING_HEAD]], LINK_WAITING)
    return batch_links


def _close(open_span: OpenSpan, args: dict[str, Any], result: Any, error: BaseException | None, end_ns: int,
           after: dict[str, Any] | None = None) -> None:
    call = open_span.call
    went_idle = False
    parts = step_parts.end_deferred(open_span, _prepare_part) if "step_root" in call.roles else None
    try:
        if after is None:
            after = _run_extractor(call, "after", call.after, args, result) if error is None else {}
        attributes = open_span.attributes
        attributes.update(after)
        # The engine has gone idle: write out what it did, this step included, once it has ended.
        # A server stopped with Ctrl-C or SIGTERM kills its engine processes before a batch
        # exporter's next round (vLLM's EngineCore gets a second SIGTERM from its API server while
        # it shuts down); flushed before the step's own end, the last step's children were written
        # without it, an orphan in the trace.
        went_idle = open_span.enclosing is None and ("step_root" in call.roles or "step_opener" in call.roles) \
            and attributes.get(NUM_RUNNING) == 0 and attributes.get(NUM_WAITING) == 0
        if error is None and attributes.get(DROP) and open_span.span is None and open_span.reserved is None and not parts:
            if _opened_step[0] is open_span:
                _opened_step[0] = None
            if went_idle:
                otel.flush_idle()
            return  # uneventful (e.g. a decode step's allocate that needed no new block)
        batch_links = _batch_links(call, attributes)
        if "step_root" in call.roles:
            _steps_emitted[0] += 1
            if _hold_step(open_span, error):
                open_span.links.extend(batch_links)
                if open_span.batch_attributes:  # set before the step's own after-call attributes, as on a created span
                    open_span.batch_attributes = {k: v for k, v in open_span.batch_attributes.items() if k not in after}
                step_parts.close_step(parts, (open_span, end_ns))
                gpu_timing.drain_pending(wait=False)
                if went_idle:
                    otel.flush_idle()
                return
            step_parts.close_step(parts)
        elif _hold_schedule(open_span, error):
            step = open_span.enclosing
            open_span.links.extend(batch_links)
            open_span.prepared = True
            _to_step(step, batch_links, attributes)
            if step_parts.defer(open_span, step, end_ns):
                return
        if open_span.span is None:
            if open_span.parent is _UNJOINED:
                _join(open_span)
            open_span.links.extend(batch_links)
            span = open_span.materialize()
        else:
            span = open_span.span
            if after:
                lean_span.set_attributes(span, _clean(after))
            lean_span.add_links(span, batch_links)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            status_code = getattr(error, "status_code", None)  # an HTTP error (OpenAIError, HTTPException)
            if "entrypoint" in call.roles and isinstance(status_code, int):
                span.set_attribute(HTTP_STATUS, status_code)
        step = _open_step.get()
        if batch_links and step is not None and "batch" in call.roles and not open_span.prepared:
            _to_step(step, batch_links, attributes)
        if "request_root" in call.roles and attributes.get(REQUEST_ID) is not None:
            request_id = str(attributes[REQUEST_ID])
            registry.register(request_id, open_span.root)
            external = attributes.get(EXTERNAL_ID)
            if external is not None:
                registry.name_external(request_id, str(external))
            for alias in attributes.get(ALIASES) or ():
                registry.register(str(alias), open_span.root)
                registry.name_external(str(alias), str(external if external is not None else request_id))
            if "enqueue" in call.roles:
                _name_enclosing_http_request(open_span, attributes[REQUEST_ID])
        elif "render" in call.roles and open_span.started_trace and error is None:
            _unclaimed_render.set(span.get_span_context())
        if call.inject is not None and not call.inject.before and error is None:
            _inject(open_span, args, result)
    except Exception:  # pragma: no cover - bookkeeping must not break the engine either
        logger.warning("servetrace: closing a %s span failed", call.hop, exc_info=True)
        span = open_span.materialize()
    if open_span.gpu_events is not None and error is None:
        start, stop = open_span.gpu_events
        gpu_timing.end_when_done(span, start, stop, end_ns)
    else:
        span.end(end_time=end_ns)
    if call.scope == "step":
        gpu_timing.drain_pending(wait=False)
    if went_idle:
        otel.flush_idle()



def _batch_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k.startswith(BATCH_PREFIX)}


def _to_step(step: OpenSpan, batch_links: list[Link], attributes: dict[str, Any]) -> None:
    """The schedule's batch onto its step: links, and its servetrace.batch.* attributes; kept on the step
    until it is created, where it is not yet (made with it: one span creation, not a creation and an update)."""
    batch = _batch_attributes(attributes)
    if step.span is None:
        step.links.extend(batch_links)
        step.batch_attributes = {**step.batch_attributes, **batch} if step.batch_attributes else batch
        return
    lean_span.add_links(step.span, batch_links)
    lean_span.set_attributes(step.span, _clean(batch))


def _hold_step(step: OpenSpan, error: BaseException | None) -> bool:
    """The step's span waits for the next pass of held steps (step_parts.close_step): nothing needed it yet,
    its ids can be drawn now (children and links used them), and it ends plainly."""
    return error is None and step.span is None and step.gpu_events is None and step.call.inject is None \
        and step_parts.holding() and step.span_context(create=False) is not None


def _hold_schedule(open_span: OpenSpan, error: BaseException | None) -> bool:
    """A schedule (the step's batch) created with its step's parts: directly in a step whose span is held too."""
    step = open_span.enclosing
    return error is None and "batch" in open_span.call.roles and step is not None and step is _open_step.get() \
        and open_span.span is None and open_span.gpu_events is None and open_span.call.inject is None \
        and not (open_span.call.roles & {"request_root", "render", "entrypoint"}) and _hold_step(step, None) \
        and open_span.span_context(create=False) is not None


def traceparent(context: SpanContext) -> str:
    """The W3C traceparent of a span context (what carriers send)."""
    headers: dict[str, str] = {}
    _propagator.inject(headers, context=trace.set_span_in_context(NonRecordingSpan(context)))
    return headers["traceparent"]


def _inject(open_span: OpenSpan, args: dict[str, Any], result: Any) -> None:
    """Hand the trace on: a request's spans carry the request's root, a step's spans the step."""
    if open_span.call.scope == "request":
        context = open_span.root or open_span.span_context()
    else:
        step = _open_step.get()
        context = (step or open_span).span_context()
    try:
        open_span.call.inject.write(args, result, {CARRIER_KEY: traceparent(context)})
    except Exception:  # the engine's own work must go on without our context
        warn_once(open_span.call, "inject", "carrying the trace context from %s (%s) failed",
                  open_span.call.hop, open_span.call.engine)
