"""When a request stops, read off its last token and its length (vLLM keeps it beside the
scheduler, in vllm/v1/core/sched/utils.py, for the scheduler and its subclasses alike)."""
from __future__ import annotations

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
