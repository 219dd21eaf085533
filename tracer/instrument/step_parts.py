"""The parts of an engine step (model.execute, model.forward, sampler.sample, scheduler.update ...)
are created with the step's end, each with its own start and end times, unless something needs
their SDK span sooner (a child, a carrier, an error, a GPU timing, another thread's link).

Why: the same span creation costs several times as much CPU right after a forward pass as at the
step's end (the forward streams the weights through the caches and pushes the interpreter's
working set out; bench/results/span_cost.md). Span processors see those spans start and end
together at the step's end, with the recorded times. A step that never ends (the process dies in
it) loses its parts with it, as it loses its own span.

Where the exporter batches (otel.configure's default), the parts of closed steps are held and
created together every STEPS_HELD steps (or once the first held step closed MAX_HELD_NS ago, or when
anything flushes): what a part costs to create falls by about half when the parts of eight steps are
made in one pass, not each step's after its forward pass (bench/results/span_cost.md). Their links to
the batch are made at their step's end (prepare), while the requests they link to are registered; a
part created late carries its own recorded times, and the exporter writes it some hundreds of
milliseconds later than before, as it writes every span then anyway (its 500 ms schedule).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# A step's parts may end on another thread (async scheduling runs the forward on the batch queue's
# worker, in a copy of the scheduling context, often after its step has ended): a part that ends
# after its step closed is created at once, and the lock keeps that check and the step's close apart.
_CLOSED: tuple = ()
_lock = threading.Lock()

STEPS_HELD = 8  # closed steps whose parts are created in one pass
MAX_HELD_NS = 250_000_000  # nor held longer than this after the first of them closed
_held: list = []  # (part, end ns) of closed steps, prepared, not yet created
_held_since = [0, 0]  # steps held, close time (ns) of the first
_holding = [False]  # hold closed steps' parts (hold_closed_steps)


def hold_closed_steps(hold: bool) -> None:
    """Hold closed steps' parts for one pass every STEPS_HELD steps (a batching exporter), or create
    them at each step's end (False: a span exported as it ends, e.g. otel.configure(batch=False))."""
    create_held()
    _holding[0] = hold

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


def holding() -> bool:
    return _holding[0]


def end_deferred(step: Any, prepare: Callable[[Any], bool]) -> list:
    """The step closes: its deferred parts, in the order they ended (parts ending later are created at
    once), each prepared now (prepare(part): its links to its batch, while the requests it links to are
    registered; False: no span, uneventful), before any is created (a part's child creates it, as its
    parent). For close_step; without holding, created here."""
    with _lock:
        deferred, step.deferred = step.deferred or (), _CLOSED
    parts = []
    for part, part_end_ns in deferred:
        try:
            if prepare(part):
                parts.append((part, part_end_ns))
        except Exception:  # pragma: no cover - bookkeeping must not break the engine
            logger.warning("servetrace: closing a %s span failed", part.call.hop, exc_info=True)
            parts.append((part, part_end_ns))
    if not _holding[0]:
        _create(parts)
        return []
    return parts


def close_step(parts: list | None, held_step: tuple | None = None) -> None:
    """After end_deferred: hold the step's parts, and the step itself ((its OpenSpan, its end ns), when its
    span waits too), for the next pass; that pass runs now when it is due."""
    if not parts and held_step is None:
        return
    with _lock:
        _held.extend(parts or ())
        if held_step is not None:
            _held.append(held_step)
        held_steps, first_ns = _held_since
        now_ns = time.time_ns()
        if held_steps == 0:
            first_ns = now_ns
        _held_since[:] = [held_steps + 1, first_ns]
        due = held_steps + 1 >= STEPS_HELD or now_ns - first_ns >= MAX_HELD_NS
    if due:
        create_held()


def create_held() -> None:
    """Create the held parts of closed steps now (before anything flushes the exporter)."""
    with _lock:
        held = _held[:]
        _held.clear()
        _held_since[:] = [0, 0]
    _create(held)


def _create(parts: list) -> None:
    for part, end_ns in parts:
        try:
            part.materialize(end_ns)
        except Exception:  # pragma: no cover - bookkeeping must not break the engine
            logger.warning("servetrace: ending a %s span failed", part.call.hop, exc_info=True)
