"""The scheduler's helpers that need none of its state: when a request stops (vLLM keeps
check_stop beside the scheduler, in vllm/v1/core/sched/utils.py, for the scheduler and its
subclasses alike), and the diff a step sends for requests the runner already holds."""
from __future__ import annotations

from engine.kv_manager import KVManager
from engine.outputs import CachedRequestData
from engine.request import Request, RequestStatus


def check_stop(request: Request, max_model_len: int) -> bool:
    # Mirrors: vllm.v1.core.sched.utils:check_stop (vllm 0.33.0)
    params = request.sampling_params
    last_token_id = request.output_token_ids[-1]
    if not params.ignore_eos and last_token_id == request.eos_token_id:
        request.status = RequestStatus.FINISHED_STOPPED
        return True
    if last_token_id in params.stop_token_ids:
        request.status = RequestStatus.FINISHED_STOPPED
        request.stop_reason = last_token_id
        return True
    if request.num_tokens >= max_model_len or request.num_output_tokens >= params.max_tokens:
        request.status = RequestStatus.FINISHED_LENGTH_CAPPED
        return True
    return False


def new_block_ids_of(kv_cache_manager: KVManager, request: Request, num_new_blocks: int) -> list[int] | None:
    # Both managers append a request's new blocks at the end of its table.
    if num_new_blocks == 0:
        return None
    return kv_cache_manager.get_block_ids(request.request_id)[-num_new_blocks:]


def make_cached_request_data(
    kv_cache_manager: KVManager,
    running_reqs: list[Request],
    resumed_reqs: list[Request],
    new_block_ids: dict[str, list[int] | None],
) -> CachedRequestData:
    # Mirrors: vllm.v1.core.sched.scheduler:Scheduler._make_cached_request_data (vllm 0.33.0)
    # (the V1 model runner's shape): running requests first, then resumed ones, whose
    # new_block_ids is the whole table they were given on readmission.
    requests = running_reqs + resumed_reqs
    return CachedRequestData(
        req_ids=[r.request_id for r in requests],
        resumed_req_ids={r.request_id for r in resumed_reqs},
        new_block_ids=[new_block_ids[r.request_id] for r in running_reqs]
        + [kv_cache_manager.get_block_ids(r.request_id) for r in resumed_reqs],
        num_computed_tokens=[r.num_computed_tokens for r in requests],
        num_output_tokens=[r.num_output_tokens for r in requests],
    )
