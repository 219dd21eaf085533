"""Data passed between scheduler, model runner and engine loop.

Mirrors: vllm.v1.core.sched.output:SchedulerOutput, vllm.v1.outputs:ModelRunnerOutput, vllm.v1.engine:EngineCoreOutput (vllm 0.33.0)
Trimmed to what a single-process engine needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.request import Request


@dataclass
class SchedulerOutput:
    # Requests scheduled for the first time (or resumed after preemption) vs. already running.
    scheduled_new_reqs: list[Request]
    scheduled_cached_reqs: list[Request]
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    # num_computed_tokens of each scheduled request *before* this step (the scheduler advances
    # Request.num_computed_tokens at schedule time, as vLLM's _update_after_schedule does).
    num_computed_tokens: dict[str, int] = field(default_factory=dict)
    # Full block table of each scheduled request.
    block_ids: dict[str, list[int]] = field(default_factory=dict)
    preempted_req_ids: set[str] = field(default_factory=set)
    finished_req_ids: set[str] = field(default_factory=set)
    step: int = 0

    @property
    def scheduled_reqs(self) -> list[Request]:
        return self.scheduled_new_reqs + self.scheduled_cached_reqs

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]
    # One list per request; empty for a prefill chunk that did not reach the end of the prompt.
    sampled_token_ids: list[list[int]]


@dataclass
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
