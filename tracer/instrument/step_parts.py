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
from typing import Any

logger = logging.getLogger(__name__)

# A step's parts may end on another thread (async scheduling runs the forward on the batch queue's
# worker, in a copy of the scheduling context, often after its step has ended): a part that ends
# after its step closed is created at once, and the lock keeps that check and the step's close apart.
_CLOSED: tuple = ()
_lock = threading.Lock()

# Roles whose spans are created at once: the step itself; spans another thread links to while they
# run; the startup trace; the schedule (it carries the batch's links: made at its end it cost less
# than at the step's end, after the forward; bench span_cost / by-hop timing at load 3-4: step +
# schedule 30.7 -> 27.1 ms per run).
_NOT_DEFERRED = frozenset({"step_root", "in_flight", "startup", "batch"})


def defer(open_span: Any, step: Any, error: BaseException | None, end_ns: int) -> bool:
    """Keep the ended, not yet created `open_span` for `step`'s end (the engine.step open in this
    thread / task); False: create it now."""
    call = open_span.call
    if error is not None or call.scope != "step" or call.inject is not None or open_span.gpu_events is not None \
            or call.roles & _NOT_DEFERRED or step is None or step is open_span:
        return False
    with _lock:
        if step.deferred is _CLOSED:
            return False
        if step.deferred is None:
            step.deferred = []
        step.deferred.append((open_span, end_ns))
    return True


def end_deferred(step: Any) -> None:
    """Close the step: create and end its deferred parts, in the order they ended (a parent created
    by its first child's materialize, as at any time); parts ending later are created at once."""
    with _lock:
        deferred, step.deferred = step.deferred or (), _CLOSED
    for part, end_ns in deferred:
        try:
            part.materialize().end(end_time=end_ns)
        except Exception:  # pragma: no cover - bookkeeping must not break the engine
            logger.warning("servetrace: ending a %s span failed", part.call.hop, exc_info=True)
