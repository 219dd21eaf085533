"""Driving a real scheduler on a clock: requests arrive when they arrived, each step takes its time.

The scheduler decides (schedule / update_from_output are the real scheduler's, through the same
runners replay uses); only time is ours. Two clocks:
- "predicted": the step's duration is the step-time model's prediction from its batch, and a request
  is added once the clock has passed its arrival time (what `whatif` runs);
- "trace": the step's start and end are the traced server's (decision step i of the trace), and a
  request is added on the decision step it entered during (what the model is fitted on, and how
  the trace's own latencies are read, with the replayed scheduler's sampling).
Only decision steps (a token scheduled, or a preemption) count and take time; a step that schedules
nothing while requests wait costs nothing here and advances the clock to the next arrival. The
clocks themselves are tracer.replay.whatif.timeline's, which SGLang's side drives its Scheduler on.
"""
from __future__ import annotations

from tracer.replay.runners.base import SchedulerRunner, validate_workload
from tracer.replay.whatif.step_time import StepTimeModel, step_features
from tracer.replay.whatif.timeline import Arrival, PredictedClock, TimedLog, TimedStep, TraceClock
from tracer.replay.workload import WorkloadRequest

__all__ = ["TimedLog", "TimedStep", "drive_timed"]


def drive_timed(runner: SchedulerRunner, workload: list[WorkloadRequest], arrivals_s: dict[str, float],
                model: StepTimeModel | None = None, trace_steps: list[tuple[float, float]] | None = None,
                max_steps: int = 200_000, after: dict[str, tuple[str, float]] | None = None,
                serial_step_max_tokens: int = 0) -> TimedLog:
    """One of model (the predicted clock) or trace_steps ((start, end) seconds of each traced decision
    step: the trace clock) sets how long steps take; arrivals_s: request id -> arrival seconds.
    after (predicted clock only): request id -> (predecessor id, lag s) for a closed-loop request,
    released lag after the end of the step that finished its predecessor instead of at arrivals_s.
    serial_step_max_tokens: the traced engine's one-thread rule the steps' features are computed with
    (step_features) on the trace clock; on the predicted clock the model's own."""
    if (model is None) == (trace_steps is None):
        raise ValueError("give a step-time model (predicted clock) or the trace's step times (trace clock), not both")
    validate_workload(workload, runner.config)
    arrivals = [Arrival(r.id, arrivals_s[r.id], r.arrival_step) for r in workload]
    clock = (TraceClock(runner.name, arrivals, trace_steps) if trace_steps is not None
             else PredictedClock(runner.name, arrivals, model, after))
    log = clock.log
    serial = model.serial_step_max_tokens if model is not None else serial_step_max_tokens
    by_id = {r.id: r for r in workload}
    prompt_len = {r.id: len(r.prompt_token_ids) for r in workload}
    idle = 0
    while clock.waiting() or runner.num_unfinished():
        if isinstance(clock, TraceClock) and clock.out_of_steps():
            log.stalled = f"the replay needs more steps than the trace's {len(trace_steps)}"
            break
        if not clock.pending and not runner.num_unfinished():
            log.stalled = f"{clock.held_count()} request(s) wait on a predecessor that never finished"
            break
        for rid in clock.admit(engine_busy=bool(runner.num_unfinished())):
            request = by_id[rid]
            # The arrival order breaks ties between equal priorities, as drive() does.
            runner.add_request(request, arrival_time=clock.release[rid])
            runner.forced_outputs[rid] = request.forced_output()
        running_before = runner.running_ids()
        scheduler_output = runner.schedule()
        scheduled = {rid: n for rid, n in runner.num_scheduled_tokens(scheduler_output).items() if n}
        still_running = set(runner.running_ids())
        preempted = [rid for rid in running_before if rid not in still_running]
        batch = []
        for rid, n in scheduled.items():
            computed = runner.request_counters(rid)[0]  # already advanced past this step's tokens
            batch.append((n, computed - n, prompt_len[rid]))
        features = step_features(batch, serial)
        sampled = runner.sample(scheduler_output)
        finished = list(runner.update_from_output(scheduler_output, sampled))
        if not scheduled and not preempted:
            idle += 1
            clock.empty_step(finished, anything_running=bool(runner.running_ids()))
            if idle >= 8 and (not clock.pending or idle >= 1000):
                log.stalled = f"no request could be scheduled for {idle} steps"
                break
            continue
        idle = 0
        clock.ran(scheduled, preempted, finished, features, [rid for rid, ids in sampled.items() if ids], batch)
        if len(log.steps) >= max_steps:
            log.stalled = f"stopped after max_steps={max_steps}"
            break
    return log
