"""Data passed between scheduler, model runner and engine loop.

Mirrors: vllm.v1.core.sched.output:SchedulerOutput, vllm.v1.core.sched.output:NewRequestData, vllm.v1.core.sched.output:CachedRequestData, vllm.v1.outputs:ModelRunnerOutput, vllm.v1.engine:EngineCoreOutput (vllm 0.33.0)
Trimmed to what a single-process engine needs (one KV cache group, n-gram speculation only, no
encoders, LoRA, connectors or pipeline parallelism).

The shape is vLLM's: a request the model runner has never seen travels as NewRequestData (its
prompt and whole block table); one it has seen travels in CachedRequestData as a diff (the blocks
allocated this step). A request resumed after a preemption is *cached*: its id is in
`resumed_req_ids` and its `new_block_ids` is its whole new block table, which replaces the old
one (vllm/v1/core/sched/output.py:137-151 CachedRequestData,
vllm/v1/core/sched/scheduler.py:1922-1978 Scheduler._make_cached_request_data). That is the
shape vLLM's V1 model runner reads, and the one replay drives; with Model Runner V2 (the GPU
default in 0.33) vLLM folds resumed requests into scheduled_new_reqs instead
(vllm/v1/core/sched/scheduler.py:1642-1644 Scheduler.schedule).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from engine.request import Request
from engine.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    """A request scheduled for the first time.

    Mirrors: vllm.v1.core.sched.output:NewRequestData (vllm 0.33.0)
    """

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    # The whole block table (vLLM: one list per KV cache group; we have one group).
    block_ids: list[int]
    # Tokens already computed when the step starts: the prefix-cache hit.
    num_computed_tokens: int
    # Ours only: one process, so the runner reads token ids off the scheduler's own Request
    # instead of keeping a copy of them (vLLM's worker does: CachedRequestState).
    request: Request

    @classmethod
    def from_request(cls, request: Request, block_ids: list[int]) -> "NewRequestData":
        return cls(
            req_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids,
            sampling_params=request.sampling_params,
            block_ids=block_ids,
            num_computed_tokens=request.num_computed_tokens,
            request=request,
        )


@dataclass
class CachedRequestData:
    """Requests the model runner already holds: running ones, then resumed ones.

    Mirrors: vllm.v1.core.sched.output:CachedRequestData (vllm 0.33.0)
    """

    req_ids: list[str]
    # For ids not in this set new_block_ids are appended to the request's block table; for ids
    # in it they are the whole new table (the old one was freed at preemption).
    resumed_req_ids: set[str]
    # None where the request got no new block this step.
    new_block_ids: list[list[int] | None]
    num_computed_tokens: list[int]
    num_output_tokens: list[int]

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)

    @classmethod
    def make_empty(cls) -> "CachedRequestData":
        return cls(req_ids=[], resumed_req_ids=set(), new_block_ids=[], num_computed_tokens=[], num_output_tokens=[])


@dataclass
class SchedulerOutput:
    """Mirrors: vllm.v1.core.sched.output:SchedulerOutput (vllm 0.33.0)"""

    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: CachedRequestData
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    preempted_req_ids: set[str] = field(default_factory=set)
    # Finished between the previous step and this one: the runner drops their state.
    finished_req_ids: set[str] = field(default_factory=set)
    step: int = 0  # ours: the scheduler's step counter, for traces
    # Speculative decoding: req_id -> the draft tokens scheduled after its last known token
    # (counted in num_scheduled_tokens); requests without drafts are absent.
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)
    num_spec_tokens_to_schedule: int = 0

    @cached_property
    def num_computed_tokens(self) -> dict[str, int]:
        """Ours: num_computed_tokens of each scheduled request before this step, from the new and
        cached data, for readers that want one lookup (vLLM's readers zip the lists)."""
        computed = {new.req_id: new.num_computed_tokens for new in self.scheduled_new_reqs}
        cached = self.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens))
        return computed

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]
    # One list per request; empty for a prefill chunk that did not reach the end of the prompt.
    sampled_token_ids: list[list[int]]


@dataclass
class DraftTokenIds:
    """Mirrors: vllm.v1.outputs:DraftTokenIds (vllm 0.33.0); what the drafter proposed after a step."""

    req_ids: list[str]
    draft_token_ids: list[list[int]]


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
