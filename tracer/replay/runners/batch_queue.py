"""Replay under async scheduling: a scheduler driven in EngineCore.step_with_batch_queue's order.

vLLM 0.33 serves with AsyncScheduler and a batch queue of depth 2
(vllm/v1/engine/core.py:708-822 EngineCore.step_with_batch_queue): each call schedules a step if
the queue has room and returns at once while the queue is not full; otherwise it blocks on the
oldest step and applies its output. So step N+1 is scheduled before step N's sampled tokens
reach the scheduler, and a request that finishes at step N has already been scheduled for N+1.

drive_batch_queue does the same with forced outputs and no model: one StepRecord per call that
schedules; what it scheduled, admitted and preempted, the output shape, and the finishes,
queues and free blocks after the update applied in that call (the previous step's, once the
queue is full). The tokens a step samples are fixed when it is scheduled, as a model would fix
them: the forced output at the request's index, counting the placeholders of steps in flight.
Both schedulers, ours (engine.async_scheduler) and vLLM's, go through this one loop.

With speculation ("ngram_gpu", the only n-gram method vLLM 0.33 schedules asynchronously) the
schedulers hold placeholder drafts only, and no drafts are handed to them (vLLM's post_step takes
none under async scheduling, vllm/v1/engine/core.py:699-705
EngineCore.post_step). The model side is what is forced: a
step that samples for a request scheduled with drafts returns its next forced tokens, 1 + a of
them, a forced by (request, outputs so far) as in the synchronous replay; an admission's drafts
are vLLM's padding and none is accepted. "Outputs so far" are the model's own count, which a
scheduler learns one step late: the driver keeps it (tracer/replay/speculation.py:ModelSide).
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from tracer.replay.runners.base import SchedulerRunner, schedule_effects, step_record, take_arrivals, validate_workload
from tracer.replay.runners.records import Admission, ReplayLog
from tracer.replay.speculation import ModelSide
from tracer.replay.workload import WorkloadRequest

BATCH_QUEUE_SIZE = 2  # vllm/config/vllm.py:588-598 VllmConfig.max_concurrent_batches, async, one PP stage


def sample_when_scheduled(runner: SchedulerRunner, scheduler_output: Any, model: ModelSide | None = None,
                          admitted: set[str] = frozenset()) -> dict[str, list[int]]:
    """The forced ids a step will sample, read right after it is scheduled: a request that is not
    a prefill chunk samples the output at its known outputs plus its placeholders (this step's
    included), less one. With speculation the model side decides (ModelSide.sample)."""
    if model is not None:
        return model.sample(runner, scheduler_output, admitted)
    sampled = {}
    for request_id in runner.num_scheduled_tokens(scheduler_output):
        request = runner._all[request_id]
        if request.is_prefill_chunk:
            sampled[request_id] = []
            continue
        forced = runner.forced_outputs[request_id]
        index = request.num_output_tokens + request.num_output_placeholders - 1
        # Past the end only for a step that is dropped anyway (its request stopped the step before).
        sampled[request_id] = [forced[min(index, len(forced) - 1)]]
    return sampled


def has_requests(runner: SchedulerRunner) -> bool:
    # Mirrors: vllm.v1.core.sched.interface:SchedulerInterface.has_requests (vllm 0.33.0)
    scheduler = runner.scheduler
    return bool(runner.num_unfinished()) or bool(scheduler.finished_req_ids)


def drive_batch_queue(runner: SchedulerRunner, workload: list[WorkloadRequest], max_steps: int = 100_000,
                      max_idle_steps: int = 8) -> ReplayLog:
    """Replay a workload through one (async) scheduler in step_with_batch_queue's order."""
    validate_workload(workload, runner.config)
    log = ReplayLog(runner.name, runner.config.to_json())
    pending = deque(sorted(enumerate(workload), key=lambda item: (item[1].arrival_step, item[0])))
    num_requests = len(workload)
    queue: deque[tuple[Any, dict[str, list[int]]]] = deque()
    step = idle_steps = 0
    ever_preempted: set[str] = set()
    previous_waiting: list[str] | None = None
    model = ModelSide() if runner.config.num_speculative_tokens else None
    while pending or runner.num_unfinished() or queue:
        if not runner.num_unfinished() and not queue and pending[0][1].arrival_step > step:
            step = pending[0][1].arrival_step  # nothing to do until the next arrival
        arrivals = take_arrivals(runner, pending, step, num_requests)

        running_before = runner.running_ids()
        scheduled: dict[str, int] = {}
        admitted: list[Admission] = []
        preempted_ids: set[str] = set()
        output: list = []
        spec: list = []
        schedule_seconds = update_seconds = 0.0
        apply = bool(queue)
        if has_requests(runner):
            started = time.perf_counter()
            scheduler_output = runner.schedule()
            schedule_seconds = time.perf_counter() - started
            scheduled = runner.num_scheduled_tokens(scheduler_output)
            admitted, preempted_ids = schedule_effects(runner, running_before, scheduled, ever_preempted)
            output = runner.output_shape(scheduler_output)
            sampled_now = sample_when_scheduled(runner, scheduler_output, model, {a.request_id for a in admitted})
            # [[request_id, drafts scheduled, drafts the model accepted], ...], fixed with the samples.
            spec = [[rid, len(tokens), len(sampled_now[rid]) - 1]
                    for rid, tokens in runner.scheduled_spec_decode_tokens(scheduler_output).items() if sampled_now.get(rid)]
            queue.appendleft((scheduler_output, sampled_now))
            # Don't block on the oldest step unless the queue is full or nothing more can be scheduled.
            apply = not (len(queue) < BATCH_QUEUE_SIZE and (scheduled or has_requests(runner)))
        finished: dict[str, str] = {}
        if apply:
            applied_output, sampled = queue.pop()
            started = time.perf_counter()
            finished = runner.update_from_output(applied_output, sampled)
            update_seconds = time.perf_counter() - started

        waiting = runner.waiting_ids()
        preempted = [rid for rid in waiting if rid in preempted_ids] if preempted_ids else []
        ever_preempted.update(preempted)
        changed = {*arrivals, *scheduled, *preempted}
        unfinished = set(runner.unfinished_ids())
        log.steps.append(step_record(
            runner, step, arrivals, scheduled, admitted, preempted, finished, waiting, previous_waiting,
            counted=[rid for rid in changed if rid in unfinished], output=output, spec=spec,
            schedule_seconds=schedule_seconds, update_seconds=update_seconds,
        ))
        previous_waiting = waiting
        idle_steps = 0 if scheduled or arrivals or finished else idle_steps + 1
        if idle_steps >= max_idle_steps and not (pending and pending[0][1].arrival_step > step):
            log.stalled = f"no request could be scheduled for {idle_steps} steps (waiting: {waiting[:5]})"
            break
        step += 1
        if len(log.steps) >= max_steps:
            log.stalled = f"stopped after max_steps={max_steps}"
            break
    return log
