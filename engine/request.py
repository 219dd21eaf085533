"""A request inside the engine core.

Mirrors: vllm.v1.request:Request, vllm.v1.request:RequestStatus (vllm 0.33.0)
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams
from engine.structured_output.request import StructuredOutputRequest


class RequestStatus(enum.IntEnum):
    """Mirrors: vllm.v1.request:RequestStatus (vllm 0.33.0); anything after PREEMPTED is finished."""

    WAITING = enum.auto()
    # Its grammar is still compiling (vllm/v1/request.py:374 RequestStatus; set in vllm/v1/request.py:116-117 Request.__init__).
    WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()
    FINISHED_ERROR = enum.auto()  # its grammar failed to compile or rejected a token (vLLM: FINISHED_ERROR)

    @staticmethod
    def is_finished(status: "RequestStatus") -> bool:
        return status > RequestStatus.PREEMPTED

    @staticmethod
    def finish_reason(status: "RequestStatus") -> str | None:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH_CAPPED: "length",
            RequestStatus.FINISHED_ABORTED: "abort",
            RequestStatus.FINISHED_ERROR: "error",
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
    # Async scheduling (engine.async_scheduler), all 0 under the synchronous Scheduler
    # (vllm/v1/request.py:162-173 Request.__init__): tokens of steps in flight that are not sampled yet, the
    # scheduled tokens of steps whose output is not processed yet, and the share of those that
    # went stale when the request was preempted mid-flight.
    num_output_placeholders: int = 0
    num_in_flight_tokens: int = 0
    num_stale_output_tokens: int = 0
    # The last schedule gave it a chunk that stops short of its known tokens (samples nothing), so
    # it takes no drafts; vllm/v1/request.py:200-201 Request.__init__, set in
    # Scheduler._update_after_schedule.
    is_prefill_chunk: bool = False

    def __post_init__(self) -> None:
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        # A constrained request waits for its grammar before it is scheduled (vLLM: Request.__init__).
        self.structured_output_request = StructuredOutputRequest.from_params(getattr(self.sampling_params, "structured_outputs", None))
        if self.structured_output_request is not None and self.status == RequestStatus.WAITING:
            self.status = RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR

    @property
    def use_structured_output(self) -> bool:
        return self.structured_output_request is not None

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
