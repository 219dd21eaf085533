"""The parts of an engine step (model.execute, model.forward, sampler.sample, scheduler.update ...)
are created with the step's end, each with its own start and end times, unless something needs
their SDK span sooner (a child, a carrier, an error, a GPU timing, another thread's link).

Why: the same span creation costs several times as much CPU right after a forward pass as at the
step's end (the forward streams the weights through the caches and pushes the interpreter's
working set out; bench/results/span_cost.md). Span processors see those spans start and end
together at the step's end, with the recorded times. A step that never ends (the process dies in
it) loses its parts with it, as it loses its own span.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# A step's parts may end on another thread (async scheduling runs the forward on the batch queue's
# worker, in a copy of the scheduling context, often after its step has ended): a part that ends
# after its step closed is created at once, and the lock keeps that check and the step's close apart.
_CLOSED: tuple = ()
_lock = threading.Lock()

def defer(open_span: Any, step: Any, end_ns: int) -> bool:
    """Keep the ended, not yet created step part `open_span` (spans: HopCall.step_part, no error, no GPU
    timing) for `step`'s end (the engine.step open in this thread / task); False: create it now (no step
    is open, or it closed)."""
    if step is None:
        return False
    with _lock:
        deferred = step.deferred
        if deferred is _CLOSED:
            return False
        if deferred is None:
            step.deferred = [(open_span, end_ns)]
        else:
            deferred.append((open_span, end_ns))
    return True


def end_deferred(step: Any, prepare: Callable[[Any], bool]) -> None:
    """Close the step: create and end its deferred parts, in the order they ended; parts ending later
    are created at once. prepare(part) first, for every part before any is created (a part's child
    creates it, as its parent): the part's links to its batch; False: no span (uneventful)."""
    with _lock:
        deferred, step.deferred = step.deferred or (), _CLOSED
    parts = []
    for part, end_ns in deferred:
        try:
            if prepare(part):
                parts.append((part, end_ns))
        except Exception:  # pragma: no cover - bookkeeping must not break the engine
            logger.warning("servetrace: closing a %s span failed", part.call.hop, exc_info=True)
            parts.append((part, end_ns))
    for part, end_ns in parts:
        try:
            part.materialize(end_ns)
        except Exception:  # pragma: no cover - bookkeeping must not break the engine
            logger.warning("servetrace: ending a %s span failed", part.call.hop, exc_info=True)
