"""Which request's trace a request-scope span joins (tracer.instrument.spans makes the span).

A request's root (http.request, else engine.enqueue) is registered by request id
(tracer.instrument.registry); its later spans (kv.match_prefix, kv.allocate, kv.free,
scheduler.preempt, detokenize) hang under that root wherever they run, with a link to the
engine-step span running at the time. A client's W3C traceparent is honoured; an offline render
(no request id yet) is claimed by the next enqueue; the HTTP handler learns its request's id from
the enqueue nested in it.
"""
from __future__ import annotations

import contextvars
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tracer.instrument import lean_span
from tracer.instrument.hop_call import HopCall
from tracer.instrument.registry import registry
from tracer.traces.schema import (
    ARRIVAL_STEP, EXTERNAL_ID, HTTP_REQUEST_ID_HEADER, LINK_KIND, LINK_STEP, REQUEST_ID, TRACEPARENT,
)

_propagator = TraceContextTextMapPropagator()

# Engine-step spans this process has emitted (spans counts them): where a request arrives in the step sequence.
steps_emitted = [0]
# A request.render span that started a trace before its request had an id (the offline path:
# render, then add_request): the next engine.enqueue in this thread / task joins its trace.
unclaimed_render: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar("servetrace_unclaimed_render", default=None)

_STEP_LINK = lean_span.frozen_attributes(((LINK_KIND, LINK_STEP),))


def join_request(call: HopCall, attributes: dict[str, Any], enclosing: Any) -> tuple:
    """A request-scope span's (parent, root, links, awaiting): the request's trace it joins, and its link
    to the step it runs in."""
    roles = call.roles
    parent: otel_context.Context | SpanContext | None = None
    links: list[Link] = []
    awaiting: str | None = None
    if enclosing is not None:
        current = enclosing.span_context()
    else:
        current = trace.get_current_span().get_span_context()
    request_id = attributes.get(REQUEST_ID)
    root = registry.get(str(request_id)) if request_id is not None else None
    if request_id is not None and attributes.get(EXTERNAL_ID) is None:
        attributes[EXTERNAL_ID] = registry.external_id(str(request_id))
    traceparent = attributes.get(TRACEPARENT)
    if "enqueue" in roles and (traceparent or steps_emitted[0]):  # a process that runs engine steps
        attributes[ARRIVAL_STEP] = steps_emitted[0]
    if root is None and "enqueue" in roles and not current.is_valid:
        root = unclaimed_render.get()
        if root is not None:
            unclaimed_render.set(None)
    if root is not None:
        parent = root  # its Context is made by materialize, if the span is written at all
    elif traceparent:
        parent = _propagator.extract({"traceparent": traceparent})
    elif enclosing is not None and enclosing.call.scope == "step" and request_id is not None:
        parent = otel_context.Context()  # a request's span does not belong to the step's trace
    # (without a request id, a batch-level call of a request hop, e.g. SGLang's alloc_for_extend,
    # nests in the step it runs in and links to the batch)
    elif enclosing is not None:
        root = enclosing.root  # nested in another span of the same request (enqueue inside http.request)
    if parent is not None and current.is_valid and (root is None or root.trace_id != current.trace_id):
        links.append(Link(current, _STEP_LINK))
    if parent is None and enclosing is None and not current.is_valid and request_id is not None and "awaits_root" in roles:
        awaiting = str(request_id)  # on a thread of its own, begun before the enqueue registered the root
    return parent, root, links, awaiting


def name_enclosing_http_request(open_span: Any, request_id: Any) -> None:
    """The HTTP handler learns its request's id only when it enqueues it: tell its span."""
    enclosing = open_span.enclosing
    while enclosing is not None and "entrypoint" not in enclosing.call.roles:
        enclosing = enclosing.enclosing
    if enclosing is None:
        return
    named = enclosing.attributes.get(REQUEST_ID)
    if named is not None and str(named) != str(request_id) and HTTP_REQUEST_ID_HEADER not in enclosing.attributes:
        # The client's X-Request-Id became another id inside the server (vLLM: chatcmpl-X, cmpl-X-0):
        # the span carries the server's id, which every later span uses, and keeps the header.
        enclosing.attributes[HTTP_REQUEST_ID_HEADER] = named
        enclosing.materialize().set_attribute(HTTP_REQUEST_ID_HEADER, str(named))
        named = None
    if named is None:
        enclosing.attributes[REQUEST_ID] = request_id
        enclosing.materialize().set_attribute(REQUEST_ID, str(request_id))
