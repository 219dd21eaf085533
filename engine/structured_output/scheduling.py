"""The scheduler's structured-output steps (vLLM 0.33's Scheduler grammar blocks), moved out of
engine.scheduler unchanged so that file stays one idea (continuous batching) and under ~420 lines."""
from __future__ import annotations


from engine.outputs import SchedulerOutput
from engine.request import Request, RequestStatus
from engine.sched_utils import check_stop
from engine.structured_output.manager import StructuredOutputManager


def handle_blocked_waiting_request(request: Request, grammar_compile_error_reqs: dict[str, str]) -> bool:
    """True if the request may be scheduled now; a grammar still compiling keeps it waiting.

    Mirrors: vllm.v1.core.sched.scheduler:Scheduler._handle_blocked_waiting_request (vllm 0.33.0)
    """
    if request.status != RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR:
        return True
    so_request = request.structured_output_request
    if so_request.grammar is None:
        return False
    if isinstance(so_request.grammar, Exception):
        # Ended by update_from_output, with the others of the step (vLLM: grammar_compile_error_reqs).
        grammar_compile_error_reqs[request.request_id] = f"Invalid structured outputs: {so_request.grammar}"
        return False
    request.status = RequestStatus.WAITING
    return True


def sampling_ids(requests: dict[str, Request], scheduler_output: SchedulerOutput) -> list[str]:
    """The step's structured requests that sample (not mid-prompt): the rows of the bitmask."""
    return [
        req_id for req_id in scheduler_output.num_scheduled_tokens
        if (req := requests.get(req_id)) is not None
        and req.use_structured_output and req.num_computed_tokens >= req.num_tokens
    ]


def advance_grammar(
    manager: StructuredOutputManager, request: Request, new_token_ids: list[int], stopped: bool,
    max_model_len: int,
) -> bool:
    """Advance the request's grammar on its kept tokens (the stop token ends it too; vLLM:
    update_from_output -> StructuredOutputManager.accept_tokens, scheduler.py:2432-2443); with
    jump-forward, append the grammar's forced continuation to new_token_ids. True if stopped."""
    if not manager.accept_tokens(request, new_token_ids):
        request.status = RequestStatus.FINISHED_ERROR
        return True
    if stopped:
        return True
    room = min(request.sampling_params.max_tokens - request.num_output_tokens,
               max_model_len - request.num_tokens - 1)
    # Rewritable: the step's tokens the forward pass has not computed yet (the sampled one), none streamed.
    num_rewritable = min(len(new_token_ids), request.num_tokens - request.num_computed_tokens)
    jump = manager.jump_forward_tokens(request, room, num_rewritable)
    if jump.num_replaced:
        del request.output_token_ids[-jump.num_replaced:], request.all_token_ids[-jump.num_replaced:]
        del new_token_ids[-jump.num_replaced:]
    for token_id in jump.token_ids:
        request.append_output_token_ids([token_id])
        new_token_ids.append(token_id)
        if check_stop(request, max_model_len):
            return True
    return False
