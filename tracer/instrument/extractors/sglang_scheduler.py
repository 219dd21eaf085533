"""Span attributes of SGLang 0.5.23's scheduler pass: the batch a step runs, the admission state at
the end of get_next_batch_to_run (budgets, the waiting head and why it was not admitted) and the
requests retracted on the way; the other processes' hops and the radix cache are in sglang.py."""
from __future__ import annotations

from typing import Any

from tracer.instrument.extractors import (
    BATCH_IDS, BATCH_SIZE, BATCH_TOKENS, BATCH_TOTAL, FORWARD_MODE, INPUT_TOKENS, NUM_RUNNING, NUM_WAITING, REQUEST_ID,
    STATUS, ids,
)
from tracer.traces.schema import (
    ADD_RESULT, BATCH_PREEMPTED, CONFIG_BLOCK_SIZE, DROP, EXTEND_TOKENS, NUM_PREEMPTIONS, RETRACT_REMAINING,
    SCHED_BATCH_FULL, SCHED_CHUNKED, SCHED_MAX_SEQS, SCHED_NEW_TOKEN_RATIO, SCHED_REM_CHUNK, SCHED_REM_INPUT,
    SCHED_REM_TOTAL, SCHED_TOKEN_BUDGET, WAITING_HEAD, WAITING_HEAD_RESULT, WAITING_HEAD_TOKENS,
)


def rid_of(req: Any) -> str | None:
    return getattr(req, "rid", None) if req is not None else None


def batch_attrs(batch: Any) -> dict[str, Any]:
    if batch is None:
        return {BATCH_SIZE: 0}
    reqs = getattr(batch, "reqs", None) or []
    mode = getattr(batch, "forward_mode", None)
    out = {BATCH_IDS: ids(r.rid for r in reqs), BATCH_SIZE: len(reqs), FORWARD_MODE: getattr(mode, "name", None)}
    # Tokens per request: an extend (prefill) batch's extend_lens (sglang/srt/managers/schedule_batch.py,
    # ScheduleBatch.prepare_for_extend sets them), one each in a decode batch.
    tokens = getattr(batch, "extend_lens", None) if mode is not None and mode.is_extend() else None
    if tokens is None and mode is not None and mode.is_decode():
        tokens = [1] * len(reqs)
    if tokens is not None and len(tokens) == len(reqs):
        out[BATCH_TOKENS], out[BATCH_TOTAL] = [int(n) for n in tokens], int(sum(tokens))
    return out


_PASS: dict[str, Any] = {"last_add": None, "retracted": []}


def schedule_before(args: dict) -> dict:
    _PASS["last_add"], _PASS["retracted"] = None, []
    return {NUM_WAITING: len(args["self"].waiting_queue)}


def _scheduler_state(scheduler: Any, running: Any) -> dict:
    """The state the step's admission decisions were made under, read at the end of the pass.
    The head of the waiting queue (calc_priority sorted it, scheduler.py:4129; admitted requests left
    it, :4319) was not admitted: its add_one_req result says why (:4270-4280; schedule_policy.py:571
    AddReqResult: NO_TOKEN, the KV pool; OTHER, a budget), or the loop never offered it to the adder
    (batch_is_full, scheduler.py:4232-4238; get_num_allocatable_reqs <= 0, :4120-4126)."""
    chunk = getattr(scheduler, "chunked_prefill_size", None)
    tracker = getattr(scheduler, "new_token_ratio_tracker", None)
    out = {
        SCHED_MAX_SEQS: getattr(scheduler, "max_running_requests", None),
        SCHED_TOKEN_BUDGET: getattr(scheduler, "max_prefill_tokens", None),
        SCHED_CHUNKED: chunk is not None and chunk > 0,
        CONFIG_BLOCK_SIZE: getattr(scheduler, "page_size", None),
        SCHED_NEW_TOKEN_RATIO: getattr(tracker, "current", None),
        SCHED_BATCH_FULL: bool(getattr(running, "batch_is_full", False)),
    }
    if _PASS["retracted"]:
        out[BATCH_PREEMPTED] = list(_PASS["retracted"])
    last = _PASS["last_add"]
    if last is not None:
        out.update({SCHED_REM_INPUT: last["rem_input"], SCHED_REM_CHUNK: last["rem_chunk"], SCHED_REM_TOTAL: last["rem_total"]})
    queue = getattr(scheduler, "waiting_queue", None) or []
    if queue:
        head = queue[0]
        out[WAITING_HEAD] = head.rid
        if last is not None and last["rid"] == head.rid:
            out[WAITING_HEAD_RESULT], out[WAITING_HEAD_TOKENS] = last["result"], last["tokens"]
        else:
            out[WAITING_HEAD_RESULT] = "BATCH_FULL" if out[SCHED_BATCH_FULL] else "NOT_TRIED"
            out[WAITING_HEAD_TOKENS] = max(len(getattr(head, "origin_input_ids", None) or []) - int(getattr(head, "prefix_len", 0) or 0), 0)
    return out


def schedule_after(args: dict, plan: Any) -> dict:
    out = batch_attrs(plan.batch_to_run)
    running, batch = plan.running_batch, plan.batch_to_run
    # Running after the step, as a V1 scheduler counts it: a new prefill batch is merged into the
    # running batch only at the next get_next_batch_to_run (sglang/srt/managers/scheduler.py:
    # Scheduler.get_next_batch_to_run, running_batch.mergebatch_attrs(last_batch)), so count it here.
    joining = len(batch.reqs) if batch is not None and batch is not running and batch.forward_mode.is_extend() else 0
    out[NUM_RUNNING] = len(getattr(running, "reqs", None) or []) + joining
    out[NUM_WAITING] = len(args["self"].waiting_queue)
    # A loop turn with no batch to run (event_loop_normal goes on_idle): no span, unless something
    # inside it (a retraction, an eviction) needed one.
    out[DROP] = plan.batch_to_run is None
    out.update(_scheduler_state(args["self"], running))
    return out


def step_before(args: dict) -> dict:
    return batch_attrs(args.get("batch"))


def allocate_before(args: dict) -> dict:
    if "req" in args:  # PrefillAdder.add_one_req
        req = args["req"]
        return {REQUEST_ID: rid_of(req), INPUT_TOKENS: len(getattr(req, "origin_input_ids", None) or [])}
    batch = args.get("batch")  # alloc_for_extend
    return {**batch_attrs(batch), EXTEND_TOKENS: getattr(batch, "extend_num_tokens", None)}


def allocate_after(args: dict, result: Any) -> dict:
    if "req" not in args:
        return {}
    adder, req = args["self"], args["req"]
    _PASS["last_add"] = {
        "rid": rid_of(req), "result": getattr(result, "name", None),
        "tokens": max(len(getattr(req, "full_untruncated_fill_ids", None) or []) - int(getattr(req, "prefix_len", 0) or 0), 0),
        "rem_input": getattr(adder, "rem_input_tokens", None), "rem_chunk": getattr(adder, "rem_chunk_tokens", None),
        "rem_total": _safe(lambda: int(adder.rem_total_tokens)),
    }
    return {ADD_RESULT: getattr(result, "name", None)}


def _safe(read: Any) -> Any:
    try:
        return read()
    except Exception:  # a budget this build computes differently: the span goes without it
        return None


def preempt_before(args: dict) -> dict:
    req = args.get("req")  # release_req(*, req, remaing_req_count, ...): one retracted request
    return {REQUEST_ID: rid_of(req), RETRACT_REMAINING: args.get("remaing_req_count")}


def preempt_after(args: dict, result: Any) -> dict:
    req = args.get("req")
    if rid_of(req) is not None:
        _PASS["retracted"].append(rid_of(req))
    return {STATUS: "RETRACTED", NUM_PREEMPTIONS: getattr(req, "retraction_count", None)}
