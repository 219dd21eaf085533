"""A request's TTFT and latency in engine steps, for a trace in which no model ran (a replay).

Replay forces each request's outputs instead of running a model, so its clock measures the
scheduler's bookkeeping, not a wait anyone would see: the meaningful unit there is the engine step.
A request waited for its first token through every step from its arrival (its first span) to the
step that completed its prefill; its latency, to the last step it took part in.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from functools import cached_property

from tracer.traces.schema import CLOCK
from tracer.tui.model import Request, TraceModel

# The time columns' labels under each clock a trace may carry (servetrace.clock on its resource).
CLOCK_LABELS = {"wall": ("TTFT", "latency"), "steps": ("TTFT", "latency"), "predicted": ("pred TTFT", "pred lat")}


def trace_clock(model: TraceModel) -> str:
    """What the trace's times measure: its resource's servetrace.clock (a replay writes "steps",
    whatif "predicted"); without one, "steps" where no model ran (a replay before the key), else "wall"."""
    seen: set[int] = set()
    for span in model.spans:
        resource = span.resource
        if resource is None or id(resource) in seen:
            continue
        seen.add(id(resource))
        value = resource.get(CLOCK)
        if value in CLOCK_LABELS:
            return str(value)
        if len(seen) > 16:  # a process's spans share one resource: a few looks settle it
            break
    return "wall" if model.ran_model else "steps"


class StepClock:
    """Counts the trace's steps inside a time range (steps are in time order: their index)."""

    def __init__(self, model: TraceModel) -> None:
        self.model = model

    @cached_property
    def _starts(self) -> list[int]:
        return [step.start_ns for step in self.model.steps]

    @cached_property
    def _ends(self) -> list[int]:
        # Running maximum: a step's end is >= its own start, so with starts in order this is sorted.
        ends, last = [], 0
        for step in self.model.steps:
            last = max(last, step.end_ns)
            ends.append(last)
        return ends

    def steps_between(self, start_ns: int, end_ns: int) -> int:
        """Steps that began at or after `start_ns` and ended by `end_ns`."""
        first = bisect_left(self._starts, start_ns)
        last = bisect_right(self._ends, end_ns)
        return max(0, last - first)

    def ttft(self, request: Request) -> int | None:
        first = request.first_token_ns
        return None if first is None else self.steps_between(request.start_ns, first)

    def latency(self, request: Request) -> int:
        return self.steps_between(request.start_ns, request.end_ns)


def steps(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n} step" if n == 1 else f"{n} steps"
