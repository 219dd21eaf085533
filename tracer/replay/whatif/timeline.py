"""The two clocks a timed replay runs on, apart from any scheduler: which requests are due before a
schedule, and when each step starts and ends. tracer.replay.whatif.clock.drive_timed drives a
SchedulerRunner on one; the SGLang side (tracer/replay/sglang_side/harness.py) drives SGLang's
Scheduler on the same object, so both sides keep time the same way.

- PredictedClock: a step takes the step-time model's prediction for its batch (spread as the
  trace's steps spread about the fit: StepTimeModel.step_time); an open-loop
  request is due once the clock has passed its arrival time, a closed-loop one (`after`) that long
  after its predecessor's predicted finish; an idle engine wakes `wake_s` after the next arrival.
- TraceClock: step i starts and ends when the trace's decision step i did; a request is due on the
  decision step it entered during (a later one is let in early when nothing else can run).
Only decision steps (a token scheduled, or a preemption) take time; a schedule of nothing costs none.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from tracer.replay.whatif.step_time import StepTimeModel


@dataclass
class TimedStep:
    start_s: float
    end_s: float
    scheduled: dict[str, int]
    preempted: list[str]
    finished: list[str]
    features: list[float]
    # (tokens, computed before, prompt length) per scheduled request: what the features were made
    # of, kept so a diagnosis can price the same steps with other features without a replay.
    batch: list[list[int]] = field(default_factory=list)

    def decisions(self) -> dict[str, Any]:
        return {"scheduled": dict(self.scheduled), "preempted": sorted(self.preempted), "finished": sorted(self.finished)}

    def to_json(self) -> dict:
        return {"start_s": self.start_s, "end_s": self.end_s, "scheduled": self.scheduled, "preempted": self.preempted,
                "finished": self.finished, "features": self.features, "batch": self.batch}


@dataclass
class TimedLog:
    engine: str
    clock: str  # "predicted" | "trace"
    steps: list[TimedStep] = field(default_factory=list)
    arrivals_s: dict[str, float] = field(default_factory=dict)
    token_times_s: dict[str, list[float]] = field(default_factory=dict)  # when each output token came out
    stalled: str | None = None

    def to_json(self) -> dict:
        return {"engine": self.engine, "clock": self.clock, "steps": [s.to_json() for s in self.steps],
                "arrivals_s": self.arrivals_s, "token_times_s": self.token_times_s, "stalled": self.stalled}

    @classmethod
    def from_json(cls, data: dict) -> "TimedLog":
        return cls(data["engine"], data["clock"], [TimedStep(**s) for s in data["steps"]], dict(data["arrivals_s"]),
                   {k: list(v) for k, v in data["token_times_s"].items()}, data.get("stalled"))


@dataclass(frozen=True)
class Arrival:
    id: str
    arrival_s: float
    arrival_step: int


class StepClock:
    """What both clocks share: the pending requests in order, the log, finishes on empty schedules."""

    def __init__(self, engine: str, kind: str, arrivals: Sequence[Arrival]) -> None:
        self.log = TimedLog(engine, kind)
        self.release = {a.id: a.arrival_s for a in arrivals}
        self.pending: deque[Arrival] = deque()

    def _sort(self, items) -> None:
        self.pending = deque(sorted(items, key=self.key))

    def key(self, arrival: Arrival) -> tuple:
        raise NotImplementedError

    def waiting(self) -> bool:
        """Requests not yet due (held closed-loop ones included)."""
        return bool(self.pending)

    def admit(self, engine_busy: bool) -> list[str]:
        """The ids to add before this schedule, in arrival order (ties: the arrival order drive() keeps)."""
        self._before_admit(engine_busy)
        due = []
        while self.pending and self._due(self.pending[0]):
            arrival = self.pending.popleft()
            self.log.arrivals_s[arrival.id] = self.release[arrival.id]
            self.log.token_times_s.setdefault(arrival.id, [])
            due.append(arrival.id)
        return due

    def empty_step(self, finished: list[str], anything_running: bool) -> None:
        """A schedule of nothing: it takes no time; a finish it reports belongs to the last step."""
        if self.pending and not anything_running:
            self._wait_for_next()
        if finished and self.log.steps:
            self.log.steps[-1].finished += list(finished)
            self._finished(list(finished), self.log.steps[-1].end_s)

    def ran(self, scheduled: dict[str, int], preempted: list[str], finished: list[str], features: list[float],
            sampled: list[str], batch: list | None = None) -> TimedStep:
        start, end = self._times(features)
        for rid in sampled:
            self.log.token_times_s.setdefault(rid, []).append(end)
        step = TimedStep(start, end, scheduled, preempted, list(finished), features, [list(b) for b in batch or ()])
        self.log.steps.append(step)
        self._finished(list(finished), end)
        return step

    def _before_admit(self, engine_busy: bool) -> None: ...

    def _due(self, arrival: Arrival) -> bool:
        raise NotImplementedError

    def _wait_for_next(self) -> None: ...

    def _times(self, features: list[float]) -> tuple[float, float]:
        raise NotImplementedError

    def _finished(self, finished: list[str], end_s: float) -> None: ...


class PredictedClock(StepClock):
    def __init__(self, engine: str, arrivals: Sequence[Arrival], model: StepTimeModel,
                 after: dict[str, tuple[str, float]] | None = None) -> None:
        super().__init__(engine, "predicted", arrivals)
        self.model, self.after, self.clock = model, dict(after or {}), 0.0
        self.held: dict[str, list[Arrival]] = {}  # predecessor id -> the requests waiting on its finish
        for arrival in arrivals:
            if arrival.id in self.after:
                self.held.setdefault(self.after[arrival.id][0], []).append(arrival)
        self._sort(a for a in arrivals if a.id not in self.after)

    def key(self, arrival: Arrival) -> tuple:
        return (self.release[arrival.id], arrival.arrival_step)

    def waiting(self) -> bool:
        return bool(self.pending or self.held)

    def held_count(self) -> int:
        return sum(map(len, self.held.values()))

    def _before_admit(self, engine_busy: bool) -> None:
        if not engine_busy:  # idle: the next arrival wakes the engine
            self._wait_for_next()

    def _wait_for_next(self) -> None:
        if self.pending:
            self.clock = max(self.clock, self.release[self.pending[0].id] + self.model.wake_s)

    def _due(self, arrival: Arrival) -> bool:
        return self.release[arrival.id] <= self.clock + 1e-9  # float rounding of ns -> s

    def _times(self, features: list[float]) -> tuple[float, float]:
        start, end = self.clock, self.clock + self.model.step_time(features, len(self.log.steps))
        self.clock = end + self.model.gap_s
        return start, end

    def _finished(self, finished: list[str], end_s: float) -> None:
        woken = [a for rid in finished for a in self.held.pop(rid, [])]
        for arrival in woken:
            self.release[arrival.id] = end_s + self.after[arrival.id][1]
        if woken:
            self._sort([*self.pending, *woken])


class TraceClock(StepClock):
    def __init__(self, engine: str, arrivals: Sequence[Arrival], trace_steps: Sequence[tuple[float, float]]) -> None:
        super().__init__(engine, "trace", arrivals)
        self.trace_steps, self.index, self.floor_step = list(trace_steps), 0, 0
        self._sort(arrivals)

    def key(self, arrival: Arrival) -> tuple:
        return (arrival.arrival_step, self.release[arrival.id])

    def out_of_steps(self) -> bool:
        return self.index >= len(self.trace_steps)

    def _due(self, arrival: Arrival) -> bool:
        return arrival.arrival_step <= max(self.index, self.floor_step)

    def _wait_for_next(self) -> None:
        # Nothing else can run: the next request is let in on this step rather than its own.
        self.floor_step = self.pending[0].arrival_step

    def _times(self, features: list[float]) -> tuple[float, float]:
        start, end = self.trace_steps[self.index]
        self.index += 1
        return start, end
