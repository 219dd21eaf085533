"""Spans that overlap another step (async scheduling): a step's model execution runs on the model
thread while the engine thread schedules the next step. tracer.instrument.spans registers the spans
of in_flight hops here while they run; a schedule that begins meanwhile links to them."""
from __future__ import annotations

import threading
from typing import Any

from opentelemetry.trace import Link

from tracer.instrument.lean_span import frozen_attributes
from tracer.traces.schema import LINK_KIND, LINK_OVERLAP, OVERLAPS_STEP, STEP

# The in_flight spans open now, in any thread, and the lock that guards the list. Each is an
# OpenSpan already materialized (created in its own thread, read from another).
_running: list[Any] = []
_lock = threading.Lock()


def started(open_span: Any) -> None:
    with _lock:
        _running.append(open_span)


def ended(open_span: Any) -> None:
    with _lock:
        if open_span in _running:
            _running.remove(open_span)


def link_overlapped(links: list[Link], attributes: dict[str, Any]) -> None:
    """A schedule beginning while another step's model execution runs: link to that execution and
    name its step (servetrace.step.overlaps_step)."""
    with _lock:
        running = list(_running)
    for other in running:
        links.append(Link(other.span.get_span_context(), frozen_attributes(((LINK_KIND, LINK_OVERLAP),))))
        if other.attributes.get(STEP) is not None:
            attributes[OVERLAPS_STEP] = other.attributes[STEP]
