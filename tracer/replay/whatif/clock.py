"""Driving a real scheduler on a clock: requests arrive when they arrived, each step takes its time.

The scheduler decides (schedule / update_from_output are the real scheduler's, through the same
runners replay uses); only time is ours. Two clocks:
- "predicted": the step's duration is the step-time model's prediction from its batch, and a request
  is added once the clock has passed its arrival time (what `whatif` runs);
- "trace": the step's start and end are the traced server's (decision step i of the trace), and a
  request is added on the decision step it entered during (what the model is fitted on, and how
  the trace's own latencies are read, with the replayed scheduler's sampling).
Only decision steps (a token scheduled, or a preemption) count and take time; a step that schedules
nothing while requests wait costs nothing here and advances the clock to the next arrival.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tracer.replay.runners.base import SchedulerRunner, validate_workload
from tracer.replay.whatif.step_time import StepTimeModel, step_features
from tracer.replay.workload import WorkloadRequest


@dataclass
class TimedStep:
    start_s: float
    end_s: float
    scheduled: dict[str, int]
    preempted: list[str]
    finished: list[str]
    features: list[float]

    def decisions(self) -> dict[str, Any]:
        return {"scheduled": dict(self.scheduled), "preempted": sorted(self.preempted), "finished": sorted(self.finished)}

    def to_json(self) -> dict:
        return {"start_s": self.start_s, "end_s": self.end_s, "scheduled": self.scheduled, "preempted": self.preempted,
                "finished": self.finished, "features": self.features}


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


def drive_timed(runner: SchedulerRunner, workload: list[WorkloadRequest], arrivals_s: dict[str, float],
                model: StepTimeModel | None = None, trace_steps: list[tuple[float, float]] | None = None,
                max_steps: int = 200_000, after: dict[str, tuple[str, float]] | None = None) -> TimedLog:
    """One of model (the predicted clock) or trace_steps ((start, end) seconds of each traced decision
    step: the trace clock) sets how long steps take; arrivals_s: request id -> arrival seconds.
    after (predicted clock only): request id -> (predecessor id, lag s) for a closed-loop request,
    released lag after the end of the step that finished its predecessor instead of at arrivals_s."""
    if (model is None) == (trace_steps is None):
        raise ValueError("give a step-time model (predicted clock) or the trace's step times (trace clock), not both")
    validate_workload(workload, runner.config)
    by_trace = trace_steps is not None
    after = {} if by_trace or not after else after
    log = TimedLog(runner.name, "trace" if by_trace else "predicted")
    release = dict(arrivals_s)  # the predicted clock's arrivals: a closed-loop one's set when its predecessor ends
    key = (lambda r: (r.arrival_step, release[r.id])) if by_trace else (lambda r: (release[r.id], r.arrival_step))
    held: dict[str, list[WorkloadRequest]] = {}  # predecessor id -> the requests waiting on its finish
    for request in workload:
        if request.id in after:
            held.setdefault(after[request.id][0], []).append(request)
    pending = deque(sorted((r for r in workload if r.id not in after), key=key))

    def released(finished_ids: list[str], end_s: float) -> None:
        nonlocal pending
        woken = [r for rid in finished_ids for r in held.pop(rid, [])]
        for request in woken:
            release[request.id] = end_s + after[request.id][1]
        if woken:
            pending = deque(sorted([*pending, *woken], key=key))
    prompt_len = {r.id: len(r.prompt_token_ids) for r in workload}
    clock, index, idle = 0.0, 0, 0
    floor_step = 0  # trace clock: a request on a later step is let in early when nothing else can run
    while pending or runner.num_unfinished() or held:
        if not pending and not runner.num_unfinished():
            log.stalled = f"{sum(map(len, held.values()))} request(s) wait on a predecessor that never finished"
            break
        if by_trace:
            if index >= len(trace_steps):
                log.stalled = f"the replay needs more steps than the trace's {len(trace_steps)}"
                break
            clock = trace_steps[index][0]
            due = lambda r: r.arrival_step <= max(index, floor_step)  # noqa: E731
        else:
            if not runner.num_unfinished():  # idle: the next arrival wakes the engine
                clock = max(clock, release[pending[0].id] + model.wake_s)
            due = lambda r: release[r.id] <= clock + 1e-9  # noqa: E731  (float rounding of ns -> s)
        while pending and due(pending[0]):
            request = pending.popleft()
            # The arrival order breaks ties between equal priorities, as drive() does.
            runner.add_request(request, arrival_time=release[request.id])
            runner.forced_outputs[request.id] = request.forced_output()
            log.arrivals_s[request.id] = release[request.id]
            log.token_times_s.setdefault(request.id, [])
        running_before = runner.running_ids()
        scheduler_output = runner.schedule()
        scheduled = {rid: n for rid, n in runner.num_scheduled_tokens(scheduler_output).items() if n}
        still_running = set(runner.running_ids())
        preempted = [rid for rid in running_before if rid not in still_running]
        batch = []
        for rid, n in scheduled.items():
            computed = runner.request_counters(rid)[0]  # already advanced past this step's tokens
            batch.append((n, computed - n, prompt_len[rid]))
        features = step_features(batch)
        sampled = runner.sample(scheduler_output)
        finished = runner.update_from_output(scheduler_output, sampled)
        if not scheduled and not preempted:
            idle += 1
            if pending and not runner.running_ids():  # everything waits on the next arrival
                if by_trace:
                    floor_step = pending[0].arrival_step
                else:
                    clock = max(clock, release[pending[0].id] + model.wake_s)
            if idle >= 8 and (not pending or idle >= 1000):
                log.stalled = f"no request could be scheduled for {idle} steps"
                break
            if finished and log.steps:
                log.steps[-1].finished += list(finished)
                released(list(finished), log.steps[-1].end_s)
            continue
        idle = 0
        if by_trace:
            start, end = trace_steps[index]
        else:
            start, end = clock, clock + model.predict(features)
        for rid, ids in sampled.items():
            if ids:
                log.token_times_s[rid].append(end)
        log.steps.append(TimedStep(start, end, scheduled, preempted, list(finished), features))
        released(list(finished), end)
        index += 1
        clock = end + (0.0 if by_trace else model.gap_s)
        if len(log.steps) >= max_steps:
            log.stalled = f"stopped after max_steps={max_steps}"
            break
    return log
