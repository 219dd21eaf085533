"""What a scheduler replay records per step, and the loop that drives any scheduler through a workload.

A runner wraps one engine's scheduler (ours or vLLM's). The driver adds each request on the step
its arrival names, calls schedule(), builds the model runner's output from the forced token ids
(no model runs), and calls update_from_output(). Everything recorded is read off the scheduler's
own state (queues, request counters, the block pool) and its SchedulerOutput, the same way for
every engine. What a step records is in tracer/replay/runners/records.py.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

from engine.math_utils import cdiv
from tracer.replay.config import ReplayConfig
from tracer.replay.runners.records import CACHED, NEW, RESUMED, Admission, ReplayLog, StepRecord
from tracer.replay.speculation import forced_drafts, verified_output
from tracer.replay.workload import WorkloadRequest

__all__ = ["Admission", "ReplayError", "ReplayLog", "SchedulerRunner", "StepRecord", "V1SchedulerRunner", "drive"]


class ReplayError(ValueError):
    """A replay that cannot continue (the workload cannot fit the config, or the engine stalled)."""


class SchedulerRunner(ABC):
    """One engine's scheduler, driven without a model."""

    name: str
    # True where the waiting queue's order changes only when a request enters or leaves it (FCFS
    # and priority queues); drive() then reads the queue only on such steps. False (the safe
    # default) for a scheduler that reorders it on its own (SGLang's longest-prefix policy).
    waiting_order_follows_membership: bool = False

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config
        self.forced_outputs: dict[str, list[int]] = {}

    @abstractmethod
    def add_request(self, request: WorkloadRequest, arrival_time: float) -> None: ...

    @abstractmethod
    def schedule(self) -> Any: ...

    @abstractmethod
    def update_from_output(self, scheduler_output: Any, sampled: dict[str, list[int]]) -> dict[str, str]:
        """Feed the sampled ids back; return {request_id: finish_reason} of the requests that finished."""

    @abstractmethod
    def num_scheduled_tokens(self, scheduler_output: Any) -> dict[str, int]: ...

    # Read-only views of the scheduler's state.
    @abstractmethod
    def running_ids(self) -> list[str]: ...

    @abstractmethod
    def waiting_ids(self) -> list[str]: ...

    @abstractmethod
    def request_counters(self, request_id: str) -> tuple[int, int, int]:
        """(num_computed_tokens, num_tokens, num_output_tokens) of an unfinished request."""

    @abstractmethod
    def unfinished_ids(self) -> list[str]: ...

    def num_unfinished(self) -> int:
        return len(self.unfinished_ids())

    def output_shape(self, scheduler_output: Any) -> list[list[Any]]:
        """How the SchedulerOutput sent each scheduled request (StepRecord.output); [] where the
        engine's output has no such shape."""
        return []

    @abstractmethod
    def num_free_blocks(self) -> int: ...

    def sample(self, scheduler_output: Any) -> dict[str, list[int]]:
        """The forced ids: a request samples once its computed tokens reach its known tokens;
        one scheduled with drafts gets its agreeing drafts plus one (tracer/replay/speculation.py)."""
        sampled = {}
        spec = self.scheduled_spec_decode_tokens(scheduler_output)
        for request_id in self.num_scheduled_tokens(scheduler_output):
            computed, num_tokens, num_outputs = self.request_counters(request_id)
            # num_computed_tokens was already advanced past this step's tokens at schedule time.
            if request_id in spec:
                sampled[request_id] = verified_output(self.forced_outputs[request_id], num_outputs, spec[request_id])
            elif computed >= num_tokens:
                sampled[request_id] = [self.forced_outputs[request_id][num_outputs]]
            else:
                sampled[request_id] = []
        return sampled

    def scheduled_spec_decode_tokens(self, scheduler_output: Any) -> dict[str, list[int]]:
        """The drafts scheduled per request (vLLM's and our SchedulerOutput name the field alike)."""
        return dict(getattr(scheduler_output, "scheduled_spec_decode_tokens", None) or {})

    def update_draft_token_ids(self, req_ids: list[str], draft_token_ids: list[list[int]]) -> None:
        """Hand the step's drafts to the scheduler (vLLM: EngineCore.post_step)."""
        raise ReplayError(f"{self.name}: this runner does not replay speculative decoding")

    def propose_forced_drafts(self, sampled_any: dict[str, bool]) -> None:
        """After a step: the forced drafts of every request that sampled in it and is unfinished."""
        req_ids, drafts = [], []
        unfinished = set(self.unfinished_ids())
        for request_id, sampled in sampled_any.items():
            if not sampled or request_id not in unfinished:
                continue
            _, num_tokens, num_outputs = self.request_counters(request_id)
            req_ids.append(request_id)
            drafts.append(forced_drafts(request_id, self.forced_outputs[request_id], num_outputs, num_tokens,
                                        self.config.num_speculative_tokens, self.config.max_model_len))
        if req_ids:
            self.update_draft_token_ids(req_ids, drafts)


def validate_workload(workload: list[WorkloadRequest], config: ReplayConfig) -> None:
    for request in workload:
        if len(request.prompt_token_ids) >= config.max_model_len:
            raise ReplayError(
                f"request {request.id!r}: prompt of {len(request.prompt_token_ids)} tokens does not fit "
                f"max_model_len={config.max_model_len} (it needs room for one output token)"
            )
        needed_blocks = cdiv(len(request.prompt_token_ids) + request.max_tokens, config.block_size)
        if needed_blocks > config.num_blocks - 1:
            raise ReplayError(
                f"request {request.id!r} needs {needed_blocks} KV blocks but the pool has "
                f"{config.num_blocks - 1} usable: it could never be scheduled"
            )


def take_arrivals(runner: SchedulerRunner, pending: deque, step: int, num_requests: int) -> list[str]:
    """Add the workload's requests due by `step` (pending: (index, request) in arrival order)."""
    arrivals = []
    while pending and pending[0][1].arrival_step <= step:
        index, request = pending.popleft()
        # Arrival order is also the tie-break order for equal priorities, identical in every engine.
        runner.add_request(request, arrival_time=request.arrival_step + index / (num_requests + 1))
        runner.forced_outputs[request.id] = request.forced_output()
        arrivals.append(request.id)
    return arrivals


def schedule_effects(runner: SchedulerRunner, running_before: list[str], scheduled: dict[str, int],
                     ever_preempted: set[str]) -> tuple[list[Admission], set[str]]:
    """What one schedule() did to the queues: the requests it admitted (scheduled but not running
    before the step: taken off the waiting queue, with their prefix hit) and those it preempted
    (running before, not after)."""
    running_after = runner.running_ids()
    was_running = set(running_before)
    admitted = [
        Admission(rid, runner.request_counters(rid)[0] - scheduled[rid], rid in ever_preempted)
        for rid in running_after
        if rid in scheduled and rid not in was_running
    ]
    still_running = set(running_after)
    return admitted, {rid for rid in running_before if rid not in still_running}


def step_record(runner: SchedulerRunner, step: int, arrivals: list[str], scheduled: dict[str, int],
                admitted: list[Admission], preempted: list[str], finished: dict[str, str], waiting: list[str],
                previous_waiting: list[str] | None, *, counted: list[str], output: Any, spec: Any = None,
                schedule_seconds: float, update_seconds: float) -> StepRecord:
    """One step as both replay loops record it: the waiting queue only where it changed, computed
    tokens only for the requests in `counted` (those the step touched and that still exist)."""
    return StepRecord(
        step=step,
        arrivals=arrivals,
        scheduled=[[rid, n] for rid, n in scheduled.items()],
        admitted=admitted,
        preempted=preempted,
        finished=[[rid, reason] for rid, reason in finished.items()],
        running=runner.running_ids(),
        waiting=None if waiting == previous_waiting else waiting,
        num_computed_tokens={rid: runner.request_counters(rid)[0] for rid in counted},
        num_free_blocks=runner.num_free_blocks(),
        output=output,
        spec=spec,
        schedule_seconds=schedule_seconds,
        update_seconds=update_seconds,
    )


def drive(runner: SchedulerRunner, workload: list[WorkloadRequest], max_steps: int = 100_000, max_idle_steps: int = 8) -> ReplayLog:
    """Replay a workload through one scheduler; one StepRecord per engine step."""
    validate_workload(workload, runner.config)
    log = ReplayLog(runner.name, runner.config.to_json())
    pending = deque(sorted(enumerate(workload), key=lambda item: (item[1].arrival_step, item[0])))
    num_requests = len(workload)
    step = 0
    idle_steps = 0
    ever_preempted: set[str] = set()
    previous_waiting: list[str] | None = None
    while pending or runner.num_unfinished():
        if not runner.num_unfinished() and pending[0][1].arrival_step > step:
            step = pending[0][1].arrival_step  # nothing to do until the next arrival
        arrivals = take_arrivals(runner, pending, step, num_requests)

        # Only the running queue is read before the step: it is small, the waiting queue is not.
        running_before = runner.running_ids()

        started = time.perf_counter()
        scheduler_output = runner.schedule()
        schedule_seconds = time.perf_counter() - started

        scheduled = runner.num_scheduled_tokens(scheduler_output)
        admitted, preempted_ids = schedule_effects(runner, running_before, scheduled, ever_preempted)
        output = runner.output_shape(scheduler_output)

        sampled = runner.sample(scheduler_output)
        # The spec record: [[request_id, drafts scheduled, drafts accepted], ...], read before the
        # update (vLLM's trims a stopped request's sampled list in place).
        spec = [[rid, len(tokens), len(sampled[rid]) - 1]
                for rid, tokens in runner.scheduled_spec_decode_tokens(scheduler_output).items() if sampled.get(rid)]
        sampled_any = {rid: bool(tokens) for rid, tokens in sampled.items()}
        started = time.perf_counter()
        finished = runner.update_from_output(scheduler_output, sampled)
        update_seconds = time.perf_counter() - started
        if runner.config.num_speculative_tokens:
            runner.propose_forced_drafts(sampled_any)

        # The waiting queue is read once per step at most, and kept only where it changed.
        if runner.waiting_order_follows_membership and previous_waiting is not None and not (
            arrivals or admitted or preempted_ids
        ):
            waiting = previous_waiting
        else:
            waiting = runner.waiting_ids()
        # In waiting-queue order, as the queue holds them (FCFS prepends: the last preempted first).
        preempted = [rid for rid in waiting if rid in preempted_ids] if preempted_ids else []
        ever_preempted.update(preempted)
        changed = {*arrivals, *scheduled, *preempted}
        log.steps.append(step_record(
            runner, step, arrivals, scheduled, admitted, preempted, finished, waiting, previous_waiting,
            counted=[rid for rid in changed if rid not in finished], output=output, spec=spec,
            schedule_seconds=schedule_seconds, update_seconds=update_seconds,
        ))
        previous_waiting = waiting
        idle_steps = 0 if scheduled or arrivals else idle_steps + 1
        if idle_steps >= max_idle_steps and not (pending and pending[0][1].arrival_step > step):
            log.stalled = f"no request could be scheduled for {idle_steps} steps (waiting: {waiting[:5]})"
            break
        step += 1
        if len(log.steps) >= max_steps:
            log.stalled = f"stopped after max_steps={max_steps}"
            break
    return log


class V1SchedulerRunner(SchedulerRunner):
    """The read-only views for a scheduler with vLLM V1's names (ours mirrors them): `scheduler`
    with requests / running / waiting and the SchedulerOutput's num_scheduled_tokens; `_all`
    keeps every Request added, finished or not."""

    scheduler: Any
    _all: dict[str, Any]

    def num_scheduled_tokens(self, scheduler_output: Any) -> dict[str, int]:
        return dict(scheduler_output.num_scheduled_tokens)

    def running_ids(self) -> list[str]:
        return [r.request_id for r in self.scheduler.running]

    def waiting_ids(self) -> list[str]:
        # FCFS iterates in queue order, the priority queue in pop order.
        return [r.request_id for r in self.scheduler.waiting]

    def request_counters(self, request_id: str) -> tuple[int, int, int]:
        request = self._all[request_id]
        return request.num_computed_tokens, request.num_tokens, request.num_output_tokens

    def unfinished_ids(self) -> list[str]:
        return list(self.scheduler.requests)

    def num_unfinished(self) -> int:
        return len(self.scheduler.requests)

    def _table(self, block_ids: Any) -> list[int]:
        """One block table as a list (vLLM sends one list per KV cache group; replay has one)."""
        return list(block_ids)

    def output_shape(self, scheduler_output: Any) -> list[list[Any]]:
        # vllm/v1/core/sched/output.py:41-48 NewRequestData and :137-151 CachedRequestData name
        # these fields; ours (engine/outputs.py) mirrors them.
        shape = [[new.req_id, NEW, new.num_computed_tokens, self._table(new.block_ids)]
                 for new in scheduler_output.scheduled_new_reqs]
        cached = scheduler_output.scheduled_cached_reqs
        for req_id, num_computed, new_block_ids in zip(cached.req_ids, cached.num_computed_tokens, cached.new_block_ids):
            kind = RESUMED if req_id in cached.resumed_req_ids else CACHED
            shape.append([req_id, kind, num_computed, None if new_block_ids is None else self._table(new_block_ids)])
        return shape
