"""A request inside the engine core.

Mirrors: vllm.v1.request:Request, vllm.v1.request:RequestStatus (vllm 0.33.0)
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    """Mirrors: vllm.v1.request:RequestStatus (vllm 0.33.0); anything after PREEMPTED is finished."""

    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @staticmethod
    def is_finished(status: "RequestStatus") -> bool:
        return status > RequestStatus.PREEMPTED

    @staticmethod
    def finish_reason(status: "RequestStatus") -> str | None:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH_CAPPED: "length",
            RequestStatus.FINISHED_ABORTED: "abort",
        }.get(status)


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.time)
    priority: int = 0
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    # Chained hashes of the full blocks of all_token_ids (vLLM: Request.block_hashes).
    block_hashes: list[bytes] = field(default_factory=list)
    num_preemptions: int = 0
    # Prefix-cache hit at first admission (vLLM keeps this in Request.prefill_stats).
    num_cached_tokens: int = -1
    stop_reason: int | str | None = None
    # Draft tokens proposed for the next step (vLLM: Request.spec_token_ids); they count toward
    # num_tokens_with_spec, which the scheduler catches num_computed_tokens up to.
    spec_token_ids: list[int] = field(default_factory=list)
    # Whether the last schedule left prompt (or recomputed) tokens uncomputed: such a request
    # takes no drafts (vLLM: Request.is_prefill_chunk, set in Scheduler._update_after_schedule).
    is_prefill_chunk: bool = False

    def __post_init__(self) -> None:
        self.all_token_ids: list[int] = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_tokens_with_spec(self) -> int:
        return len(self.all_token_ids) + len(self.spec_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return RequestStatus.is_finished(self.status)

    def get_finish_reason(self) -> str | None:
        return RequestStatus.finish_reason(self.status)

    def __lt__(self, other: "Request") -> bool:
        # Mirrors: vllm.v1.request:Request.__lt__ (vllm 0.33.0); the order of the priority waiting queue.
        if self.priority != other.priority:
            return self.priority < other.priority
        if self.arrival_time != other.arrival_time:
            return self.arrival_time < other.arrival_time
        if self.request_id != other.request_id:
            return self.request_id < other.request_id
        return id(self) < id(other)

    def append_output_token_ids(self, token_ids: list[int]) -> None:
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)
