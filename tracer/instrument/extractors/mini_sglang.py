"""Our engine's SGLang mode (cache_mode sglang, engine/sglang_scheduler.py): what its scheduler pass
records, as tracer/instrument/extractors/sglang_scheduler.py records SGLang's own. The state at the
end of SglangScheduler.schedule: the PrefillAdder's budgets after its last add_one_req and that call's
AddReqResult for the waiting head (or BATCH_FULL / NOT_TRIED when the head was never offered),
new_token_ratio, batch_is_full, and whether the step is a prefill (EXTEND) or a decode batch, so
explain reads its waiting causes with SGLang's logic (tracer/traces/sglang_causes.py)."""
from __future__ import annotations

from typing import Any

from tracer.traces.schema import (
    ADD_RESULT, CONFIG_BLOCK_SIZE, FORWARD_MODE, INPUT_TOKENS, REQUEST_ID, SCHED_BATCH_FULL, SCHED_CHUNKED,
    SCHED_MAX_SEQS, SCHED_NEW_TOKEN_RATIO, SCHED_REM_CHUNK, SCHED_REM_INPUT, SCHED_REM_TOTAL, SCHED_TOKEN_BUDGET,
    WAITING_HEAD, WAITING_HEAD_RESULT, WAITING_HEAD_TOKENS,
)

# The pass in progress (one engine thread steps the scheduler): the last add_one_req's outcome.
_PASS: dict[str, Any] = {"last_add": None}


def is_sglang_mode(scheduler: Any) -> bool:
    return hasattr(scheduler, "new_token_ratio") and hasattr(scheduler, "waiting_queue")


def schedule_before(args: dict) -> dict:
    _PASS["last_add"] = None
    return {}


def add_before(args: dict) -> dict:
    """PrefillAdder.add_one_req(entry)."""
    request = args["entry"].request
    return {REQUEST_ID: request.request_id, INPUT_TOKENS: request.num_prompt_tokens}


def add_after(args: dict, result: Any) -> dict:
    adder, entry = args["self"], args["entry"]
    _PASS["last_add"] = {
        "rid": entry.request.request_id, "result": result.name,
        "tokens": max(len(entry.fill_ids()) - entry.kv.prefix_len, 0),
        "rem_input": adder.rem_input_tokens, "rem_chunk": adder.rem_chunk_tokens, "rem_total": int(adder.rem_total_tokens),
    }
    return {ADD_RESULT: result.name}


def schedule_state(scheduler: Any) -> dict:
    """Read at the end of schedule(): SGLang's names, from our mirror of its loop."""
    capacity = (scheduler.kv.num_pages - 1) * scheduler.block_size
    out = {
        # max_running_requests: at most half the pool in tokens (SglangScheduler._num_allocatable_reqs)
        SCHED_MAX_SEQS: min(scheduler.scheduler_config.max_num_seqs, capacity // 2),
        SCHED_TOKEN_BUDGET: scheduler.scheduler_config.max_num_batched_tokens,
        SCHED_CHUNKED: scheduler.chunked_prefill_size is not None,
        CONFIG_BLOCK_SIZE: scheduler.block_size,
        SCHED_NEW_TOKEN_RATIO: scheduler.new_token_ratio.current,
        SCHED_BATCH_FULL: scheduler.batch_is_full,
        FORWARD_MODE: "EXTEND" if scheduler.last_extend is not None else "DECODE",  # set by this step's prefill only
        WAITING_HEAD: None, WAITING_HEAD_RESULT: None, WAITING_HEAD_TOKENS: None,
    }
    last = _PASS["last_add"]
    if last is not None:
        out.update({SCHED_REM_INPUT: last["rem_input"], SCHED_REM_CHUNK: last["rem_chunk"], SCHED_REM_TOTAL: last["rem_total"]})
    if scheduler.waiting_queue:
        head = scheduler.waiting_queue[0]
        out[WAITING_HEAD] = head.request.request_id
        if last is not None and last["rid"] == head.request.request_id:
            out[WAITING_HEAD_RESULT], out[WAITING_HEAD_TOKENS] = last["result"], last["tokens"]
        else:
            out[WAITING_HEAD_RESULT] = "BATCH_FULL" if scheduler.batch_is_full else "NOT_TRIED"
            out[WAITING_HEAD_TOKENS] = max(len(head.fill_ids()) - head.kv.prefix_len, 0)
    return out
