"""What the wrapper of one hooked target knows before any call (HopCall, its Inject), and the
attribute work every span shares: running an extractor without ever breaking the engine, and
cleaning attributes into valid OpenTelemetry values."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer.traces.schema import EXTRACTOR_ERROR

logger = logging.getLogger("tracer.instrument.spans")  # the name users filter on, as before the split

Extractor = Callable[..., Mapping[str, Any]]


@dataclass(frozen=True)
class Inject:
    """Writes the trace context into what a call hands to another process, so that the spans there
    join this trace (an extractor module's INJECT). `write(args, result, carrier)` gets the carrier
    {CARRIER_KEY: traceparent}; before=True: called when the call starts (result is None), for a call
    that sends its message itself."""

    write: Callable[[dict, Any, dict], None]
    before: bool = False


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
    roles: frozenset[str] = frozenset()  # the hop's roles in the catalog (hops.yaml's header says each)
    inject: Inject | None = None
    part_of_step: bool = False  # the target runs as one part of a step an opener began (catalog)
    mode: str = ""  # the engine mode the target runs in (catalog): stamped on its spans
    # (args, result) -> True: the call was uneventful (what its after-extractor would mark DROP), known
    # without running that extractor (an extractor module's DROP_IF). Not for step roots / openers.
    drop_if: Callable[[dict, Any], bool] | None = None
    # (args) -> True: asked before the call, which then opens no span: drop_if would be True of whatever
    # it returns (an extractor module's SKIP_IF). Not for step roots / openers.
    skip_if: Callable[[dict], bool] | None = None
    joins_late: bool = field(default=False, init=False, compare=False)  # see _joins_late
    step_part: bool = field(default=False, init=False, compare=False)  # see _step_part

    def __post_init__(self) -> None:
        object.__setattr__(self, "joins_late", _joins_late(self))
        object.__setattr__(self, "step_part", _step_part(self))
        if self.roles & {"step_root", "step_opener"}:
            object.__setattr__(self, "drop_if", None)  # their end also decides whether the engine went idle
            object.__setattr__(self, "skip_if", None)


# Request-scope roles whose span must know its trace when it begins (it registers, names or starts one,
# or another thread reads it while it runs).
_JOINS_AT_ONCE = frozenset({"entrypoint", "request_root", "enqueue", "render", "awaits_root", "in_flight",
                            "step_root", "step_opener", "startup", "batch"})


def _joins_late(call: "HopCall") -> bool:
    """A request span nested in another (kv.allocate in a schedule) looks its trace up (parent, root,
    step link, external id) only when it is written: most of them end dropped (a decode step's
    allocate that fits its last block), and then that work was for nothing. What it reads (the
    enclosing span, the request's registered root, its own before-call attributes) does not change
    while it runs."""
    return call.scope == "request" and not (call.roles & _JOINS_AT_ONCE) and call.inject is None and not call.cuda_timed


# Step-scope roles that shape the step's trace or a request's: never a plain part of a step. The step
# root and the startup trace are created at once; the schedule (step_opener, batch) at its end, with the
# batch's links (made then it cost less than at the step's end, after the forward; bench span_cost /
# by-hop timing at load 3-4: step + schedule 30.7 -> 27.1 ms per run).
_NOT_PARTS = frozenset({"step_root", "step_opener", "startup", "batch", "entrypoint", "request_root"})


def _step_part(call: "HopCall") -> bool:
    """A plain part of an engine step (model.execute, model.forward, sampler.sample, scheduler.update,
    detokenize): nested in what encloses it, it links nothing when it begins, and once it ends (its
    after-extractor run then) nothing but its own span is left to do, which waits for the step's end
    (tracer.instrument.step_parts). spans.begin / spans.end take a short path for these: most of them
    begin and end right after a forward pass, when every line of Python costs several times what it
    does warm (bench/results/span_cost.md)."""
    return call.scope == "step" and not (call.roles & _NOT_PARTS) and call.inject is None and call.drop_if is None \
        and call.skip_if is None


_warned: set[tuple[str, str, str]] = set()


def warn_once(call: HopCall, phase: str, message: str, *args: Any) -> None:
    """Log a hook's failure once per (engine, hop, phase), with its traceback; the engine goes on."""
    key = (call.engine, call.hop, phase)
    if key not in _warned:
        _warned.add(key)
        logger.warning("servetrace: " + message, *args, exc_info=True)


def run_extractor(call: HopCall, phase: str, fn: Extractor | None, *args: Any) -> dict[str, Any]:
    if fn is None:
        return {}
    try:
        return dict(fn(*args) or {})
    except Exception as exc:  # an extractor must never break the engine: the span says what went wrong
        warn_once(call, phase, "%s extractor for %s (%s) failed; continuing without its attributes",
                  phase, call.hop, call.engine)
        return {EXTRACTOR_ERROR: f"{phase}: {type(exc).__name__}: {exc}"[:500]}


_SCALARS = frozenset({str, bool, int, float})


def clean_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    # Runs on every written span: the common cases (a scalar; a list of only str or only int, a
    # batch's ids and token counts) are tested by exact type first, in C (set(map(type, ...))).
    clean = {}
    for key, value in attributes.items():
        if value is None or key.startswith("_"):
            continue
        kind = type(value)
        if kind in _SCALARS:
            pass
        elif isinstance(value, (list, tuple, set, frozenset)):  # a tuple: what the SDK stores (lean_span takes it as is)
            value = tuple(value)
            if not set(map(type, value)) <= _SCALARS:
                value = tuple(v if isinstance(v, (str, bool, int, float)) else str(v) for v in value)
        elif not isinstance(value, (str, bool, int, float)):
            value = str(value)
        clean[key] = value
    return clean
