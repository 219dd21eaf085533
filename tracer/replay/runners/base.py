"""What a scheduler replay records per step, and the loop that drives any scheduler through a workload.

A runner wraps one engine's scheduler (ours or vLLM's). The driver adds each request on the step
its arrival names, calls schedule(), builds the model runner's output from the forced token ids
(no model runs), and calls update_from_output(). Everything recorded is read off the scheduler's
own state (queues, request counters, the block pool), the same way for every engine.
"""
from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.math_utils import cdiv
from tracer.replay.config import ReplayConfig
from tracer.replay.workload import WorkloadRequest


class ReplayError(ValueError):
    """A replay that cannot continue (the workload cannot fit the config, or the engine stalled)."""


@dataclass
class Admission:
    request_id: str
    cached_tokens: int  # num_computed_tokens when admitted: the prefix-cache hit
    resumed: bool  # re-admitted after a preemption


@dataclass
class StepRecord:
    step: int
    arrivals: list[str]
    scheduled: list[list[Any]]  # [[request_id, num_tokens], ...] in the scheduler's order
    admitted: list[Admission]
    preempted: list[str]
    finished: list[list[str]]  # [[request_id, finish_reason], ...]
    running: list[str]  # the running queue after the step
    waiting: list[str]  # the waiting queue after the step (priority order for the priority policy)
    num_computed_tokens: dict[str, int]  # every unfinished request, after the step
    num_free_blocks: int
    schedule_seconds: float = 0.0
    update_seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "StepRecord":
        data = dict(data)
        data["admitted"] = [Admission(**a) for a in data["admitted"]]
        return cls(**data)


@dataclass
class ReplayLog:
    engine: str
    config: dict
    steps: list[StepRecord] = field(default_factory=list)
    stalled: str | None = None  # why the replay stopped early, if it did

    @property
    def schedule_seconds(self) -> float:
        return sum(s.schedule_seconds for s in self.steps)

    @property
    def update_seconds(self) -> float:
        return sum(s.update_seconds for s in self.steps)

    def to_json(self) -> dict:
        return {
            "engine": self.engine,
            "config": self.config,
            "stalled": self.stalled,
            "num_steps": len(self.steps),
            "schedule_seconds": self.schedule_seconds,
            "update_seconds": self.update_seconds,
            "steps": [s.to_json() for s in self.steps],
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def read(cls, path: str | Path) -> "ReplayLog":
        data = json.loads(Path(path).read_text())
        return cls(data["engine"], data["config"], [StepRecord.from_json(s) for s in data["steps"]], data.get("stalled"))


class SchedulerRunner(ABC):
    """One engine's scheduler, driven without a model."""

    name: str

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

    @abstractmethod
    def num_free_blocks(self) -> int: ...

    def sample(self, scheduler_output: Any) -> dict[str, list[int]]:
        """The forced ids: a request samples once its computed tokens reach its known tokens."""
        sampled = {}
        for request_id in self.num_scheduled_tokens(scheduler_output):
            computed, num_tokens, num_outputs = self.request_counters(request_id)
            # num_computed_tokens was already advanced past this step's tokens at schedule time.
            if computed >= num_tokens:
                sampled[request_id] = [self.forced_outputs[request_id][num_outputs]]
            else:
                sampled[request_id] = []
        return sampled


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


def drive(runner: SchedulerRunner, workload: list[WorkloadRequest], max_steps: int = 100_000, max_idle_steps: int = 8) -> ReplayLog:
    """Replay a workload through one scheduler; one StepRecord per engine step."""
    validate_workload(workload, runner.config)
    log = ReplayLog(runner.name, runner.config.to_json())
    pending = deque(sorted(enumerate(workload), key=lambda item: (item[1].arrival_step, item[0])))
    num_requests = len(workload)
    step = 0
    idle_steps = 0
    ever_preempted: set[str] = set()
    while pending or runner.unfinished_ids():
        if not runner.unfinished_ids() and pending[0][1].arrival_step > step:
            step = pending[0][1].arrival_step  # nothing to do until the next arrival
        arrivals = []
        while pending and pending[0][1].arrival_step <= step:
            index, request = pending.popleft()
            # Arrival order is also the tie-break order for equal priorities, identical in every engine.
            runner.add_request(request, arrival_time=request.arrival_step + index / (num_requests + 1))
            runner.forced_outputs[request.id] = request.forced_output()
            arrivals.append(request.id)

        running_before = set(runner.running_ids())
        waiting_before = set(runner.waiting_ids())

        started = time.perf_counter()
        scheduler_output = runner.schedule()
        schedule_seconds = time.perf_counter() - started

        scheduled = runner.num_scheduled_tokens(scheduler_output)
        running_after_schedule = runner.running_ids()
        admitted = [
            Admission(rid, runner.request_counters(rid)[0] - scheduled[rid], rid in ever_preempted)
            for rid in running_after_schedule
            if rid in waiting_before and rid in scheduled
        ]
        preempted = [rid for rid in runner.waiting_ids() if rid in running_before]
        ever_preempted.update(preempted)

        sampled = runner.sample(scheduler_output)
        started = time.perf_counter()
        finished = runner.update_from_output(scheduler_output, sampled)
        update_seconds = time.perf_counter() - started

        unfinished = runner.unfinished_ids()
        log.steps.append(
            StepRecord(
                step=step,
                arrivals=arrivals,
                scheduled=[[rid, n] for rid, n in scheduled.items()],
                admitted=admitted,
                preempted=preempted,
                finished=[[rid, reason] for rid, reason in finished.items()],
                running=runner.running_ids(),
                waiting=runner.waiting_ids(),
                num_computed_tokens={rid: runner.request_counters(rid)[0] for rid in unfinished},
                num_free_blocks=runner.num_free_blocks(),
                schedule_seconds=schedule_seconds,
                update_seconds=update_seconds,
            )
        )
        idle_steps = 0 if scheduled or arrivals else idle_steps + 1
        if idle_steps >= max_idle_steps and not (pending and pending[0][1].arrival_step > step):
            log.stalled = f"no request could be scheduled for {idle_steps} steps (waiting: {runner.waiting_ids()[:5]})"
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
