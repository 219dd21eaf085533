"""Span attributes for SGLang 0.5.23, and how a request's trace crosses its three processes.

Request ids are SGLang's `rid` (the OpenAI response id; SGLang ignores X-Request-Id, which the
http.request span keeps as a header attribute). Radix-cache calls carry a request only when the
caller passed one (MatchPrefixParams.req); otherwise the span is where the call happened.

Context across processes: SGLang's messages are msgspec Structs with no field to spare, pickled by
sock_send (sglang/srt/managers/io_struct.py:2732), so the request contexts ride in a wrapped
time_stats value (tracer.instrument.carriers): TokenizerManager._send_one_request -> the scheduler
(INJECT), SenderWrapper.send_output -> the detokenizer (CARRY, a catalog carrier).
"""
from __future__ import annotations

import sys
from typing import Any

from tracer.instrument.extractors import (
    BATCH_TOKENS, BATCH_TOTAL,
    BATCH_FINISHED, BATCH_IDS, BATCH_SIZE, CACHED_TOKENS, EVICT_REQUESTED, EVICTABLE,
    EVICTED, FINISH_REASONS, FORWARD_MODE, INPUT_TOKENS, KEY_TOKENS, MAX_TOKENS, NUM_RUNNING, NUM_WAITING,
    OPERATION, OUTPUT_TOKENS, PROTECTED, REQUEST_ID, STATUS, TEMPERATURE, TOP_K, TOP_P, ids,
    SPEC_NUM_ACCEPTED, SPEC_NUM_DRAFT, SPEC_NUM_REJECTED, SPEC_NUM_REQUESTS,
)
from tracer.instrument import carriers
from tracer.instrument.registry import registry
from tracer.instrument.spans import Inject, traceparent
from tracer.traces.schema import (
    ADD_RESULT, CARRIER_KEY, CHECKPOINT, DROP, CHECKPOINT_UP_TO, CONFIG_BLOCK_SIZE, CONFIG_CHUNKED_PREFILL,
    CONFIG_MAX_BATCHED_TOKENS, CONFIG_MAX_NUM_SEQS, CONFIG_MAX_TOTAL_TOKENS, CONFIG_POLICY, CONFIG_PREFIX_CACHING,
    EXTEND_TOKENS, HTTP_REQUEST_ID_HEADER, NUM_PREEMPTIONS, RETRACT_REMAINING, HTTP_STREAM, RADIX_NODE_ID as NODE_ID, TRACEPARENT,
    BATCH_PREEMPTED, CACHING_ENABLED, HASH_DOMAIN, PROMPT_TOKEN_IDS, RADIX_HASH_TOKENS,
    RADIX_PREFIX_HASHES, SCHED_BATCH_FULL, SCHED_CHUNKED, SCHED_MAX_SEQS, SCHED_NEW_TOKEN_RATIO, SCHED_REM_CHUNK,
    SCHED_REM_INPUT, SCHED_REM_TOTAL, SCHED_TOKEN_BUDGET, WAITING_HEAD, WAITING_HEAD_RESULT, WAITING_HEAD_TOKENS,
)
from tracer.instrument import otel
from tracer.instrument.extractors.sglang_radix import first_sight, prefix_hashes, radix_path



def _sizes(cache: Any) -> dict[str, Any]:
    return {EVICTABLE: cache.evictable_size(), PROTECTED: cache.protected_size()}


def _rid(req: Any) -> str | None:
    return getattr(req, "rid", None) if req is not None else None


def _sampling(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    return {
        MAX_TOKENS: getattr(params, "max_new_tokens", None),
        TEMPERATURE: getattr(params, "temperature", None),
        TOP_P: getattr(params, "top_p", None),
        TOP_K: getattr(params, "top_k", None),
    }


def _batch(batch: Any) -> dict[str, Any]:
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


# -- radix cache ----------------------------------------------------------------------------------


def match_before(args: dict) -> dict:
    params = args["params"]
    return {REQUEST_ID: _rid(params.req), KEY_TOKENS: len(params.key)}


def match_after(args: dict, result: Any) -> dict:
    cache, params = args["self"], args["params"]
    node = result.last_device_node
    page = int(getattr(cache, "page_size", 1) or 1)
    out = {CACHED_TOKENS: result.device_prefix_len, NODE_ID: getattr(node, "id", None), **_sizes(cache),
           CONFIG_BLOCK_SIZE: page, CACHING_ENABLED: not getattr(cache, "disable", False), **radix_path(node)}
    req = params.req
    rid = _rid(req)
    if rid is not None and first_sight(req):  # the prompt's hashes once per request: lpm matches every waiting request each pass
        tokens = getattr(req, "origin_input_ids", None) or []
        key = params.key
        domain = "salted" if getattr(key, "cache_salt", None) else ("extra-key" if getattr(key, "extra_key", None) else None)
        seed = f"{getattr(key, 'extra_key', None)}|{getattr(key, 'cache_salt', None)}".encode() if domain else b""
        unit = page * -(-16 // page)
        out[RADIX_HASH_TOKENS], out[RADIX_PREFIX_HASHES], out[HASH_DOMAIN] = unit, prefix_hashes(tokens, unit, seed), domain
        out[PROMPT_TOKEN_IDS] = list(tokens) if otel.capture_content() else None
    return out


def insert_before(args: dict) -> dict:
    if "params" in args:
        key = args["params"].key
        return {KEY_TOKENS: len(key) if key is not None else None}
    return {REQUEST_ID: _rid(args.get("req")), CHECKPOINT_UP_TO: args.get("up_to")}  # checkpoint(req, up_to=)


def insert_after(args: dict, result: Any) -> dict:
    out = _sizes(args["self"])
    if result is not None and hasattr(result, "prefix_len"):
        out[CACHED_TOKENS] = result.prefix_len
    return out


def evict_before(args: dict) -> dict:
    return {EVICT_REQUESTED: args["params"].num_tokens}


def evict_after(args: dict, result: Any) -> dict:
    return {EVICTED: result.num_tokens_evicted, **_sizes(args["self"])}


def free_before(args: dict) -> dict:
    req = args["req"]
    finished = getattr(req, "finished_reason", None)
    return {
        REQUEST_ID: _rid(req),
        CHECKPOINT: bool(args.get("checkpoint")),
        OUTPUT_TOKENS: len(getattr(req, "output_ids", None) or []),
        FINISH_REASONS: [type(finished).__name__] if finished is not None else None,
    }


# -- scheduler process ------------------------------------------------------------------------------


def enqueue_before(args: dict) -> dict:
    if "recv_req" in args:
        req = args["recv_req"]
    else:
        req = args.get("tokenized_obj")
    if req is None:
        return {}
    return {
        REQUEST_ID: _rid(req),
        INPUT_TOKENS: len(getattr(req, "input_ids", None) or []),
        **_sampling(getattr(req, "sampling_params", None)),
    }


def enqueue_after(args: dict, _: Any) -> dict:
    scheduler = args["self"]
    return {NUM_WAITING: len(scheduler.waiting_queue)} if hasattr(scheduler, "waiting_queue") else {}


# What one get_next_batch_to_run pass decided, gathered from the calls inside it: its PrefillAdder is
# a local of _get_new_batch_prefill_raw (scheduler.py:4157), seen only by add_one_req's extractor.
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
    out = _batch(plan.batch_to_run)
    running, batch = plan.running_batch, plan.batch_to_run
    # Running after the step, as a V1 scheduler counts it: a new prefill batch is merged into the
    # running batch only at the next get_next_batch_to_run (sglang/srt/managers/scheduler.py:
    # Scheduler.get_next_batch_to_run, running_batch.merge_batch(last_batch)), so count it here.
    joining = len(batch.reqs) if batch is not None and batch is not running and batch.forward_mode.is_extend() else 0
    out[NUM_RUNNING] = len(getattr(running, "reqs", None) or []) + joining
    out[NUM_WAITING] = len(args["self"].waiting_queue)
    # A loop turn with no batch to run (event_loop_normal goes on_idle): no span, unless something
    # inside it (a retraction, an eviction) needed one.
    out[DROP] = plan.batch_to_run is None
    out.update(_scheduler_state(args["self"], running))
    return out


def step_before(args: dict) -> dict:
    return _batch(args.get("batch"))


def allocate_before(args: dict) -> dict:
    if "req" in args:  # PrefillAdder.add_one_req
        req = args["req"]
        return {REQUEST_ID: _rid(req), INPUT_TOKENS: len(getattr(req, "origin_input_ids", None) or [])}
    batch = args.get("batch")  # alloc_for_extend
    return {**_batch(batch), EXTEND_TOKENS: getattr(batch, "extend_num_tokens", None)}


def allocate_after(args: dict, result: Any) -> dict:
    if "req" not in args:
        return {}
    adder, req = args["self"], args["req"]
    _PASS["last_add"] = {
        "rid": _rid(req), "result": getattr(result, "name", None),
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
    return {REQUEST_ID: _rid(req), RETRACT_REMAINING: args.get("remaing_req_count")}


def preempt_after(args: dict, result: Any) -> dict:
    req = args.get("req")
    if _rid(req) is not None:
        _PASS["retracted"].append(_rid(req))
    return {STATUS: "RETRACTED", NUM_PREEMPTIONS: getattr(req, "retraction_count", None)}


def execute_before(args: dict) -> dict:
    return _batch(args.get("batch"))


def forward_before(args: dict) -> dict:
    forward_batch = args.get("forward_batch")
    mode = getattr(forward_batch, "forward_mode", None)
    return {BATCH_SIZE: getattr(forward_batch, "batch_size", None), FORWARD_MODE: getattr(mode, "name", None)}


def update_before(args: dict) -> dict:
    return _batch(args.get("batch"))


def update_after(args: dict, _: Any) -> dict:
    reqs = getattr(args.get("batch"), "reqs", None) or []
    finished = [r for r in reqs if r.finished()]
    return {BATCH_FINISHED: ids(r.rid for r in finished)}


# -- API-server and detokenizer processes ----------------------------------------------------------


def _pickled_ipc() -> bool:
    """Carriers ride only in pickled messages; with SGLANG_USE_PICKLE_IPC=0 (msgpack) they stay home."""
    io_struct = sys.modules.get("sglang.srt.managers.io_struct")
    return bool(getattr(io_struct, "_USE_PICKLE_IPC", False))


def enqueue_inject(args: dict, _: Any, carrier: dict) -> None:
    """TokenizerManager._send_one_request, before it pickles the request for the scheduler."""
    tokenized = args.get("tokenized_obj")
    rid = _rid(tokenized)
    if rid is not None and hasattr(tokenized, "time_stats") and _pickled_ipc():
        carriers.carry(tokenized, "time_stats", {rid: carrier[CARRIER_KEY]})


def send_output_carry(args: dict, _: Any, __: dict) -> None:
    """SenderWrapper.send_output: every request the output names carries its context along."""
    output = args.get("output")
    request_ids = getattr(output, "rids", None) or ([output.rid] if getattr(output, "rid", None) else [])
    if not request_ids or not hasattr(output, "time_stats") or not _pickled_ipc():
        return
    contexts = {}
    for request_id in request_ids:
        context = registry.get(str(request_id))
        if context is not None and context.trace_flags.sampled:
            contexts[str(request_id)] = traceparent(context)
    carriers.carry(output, "time_stats", contexts)


def startup_after(args: dict, _: Any) -> dict:
    """Scheduler.__init__ (plugins load before it: sglang/srt/managers/scheduler.py:6323): the pool and
    the scheduler's limits a replay of this server's trace needs."""
    scheduler = args["self"]
    return {
        CONFIG_MAX_TOTAL_TOKENS: getattr(scheduler, "max_total_num_tokens", None),
        CONFIG_MAX_NUM_SEQS: getattr(scheduler, "max_running_requests", None),
        CONFIG_MAX_BATCHED_TOKENS: getattr(scheduler, "max_prefill_tokens", None),
        CONFIG_CHUNKED_PREFILL: getattr(scheduler, "chunked_prefill_size", None) is not None,
        CONFIG_BLOCK_SIZE: getattr(scheduler, "page_size", None),
        CONFIG_POLICY: str(getattr(scheduler, "schedule_policy", "")),
        CONFIG_PREFIX_CACHING: not getattr(scheduler, "disable_radix_cache", False),
    }


def http_before(args: dict) -> dict:
    request = args.get("request")
    raw = args.get("raw_request")
    out = {OPERATION: "chat" if hasattr(request, "messages") else "text_completion"}
    if request is not None:
        out[MAX_TOKENS] = getattr(request, "max_tokens", None)
        out[TEMPERATURE] = getattr(request, "temperature", None)
        out[HTTP_STREAM] = bool(getattr(request, "stream", False))
        out[REQUEST_ID] = getattr(request, "rid", None)
    headers = getattr(raw, "headers", None)
    if headers is not None:
        out[TRACEPARENT] = headers.get("traceparent")
        out[HTTP_REQUEST_ID_HEADER] = headers.get("x-request-id")
    return out


def render_before(args: dict) -> dict:
    return {REQUEST_ID: _rid(args.get("obj"))}


def render_after(args: dict, result: Any) -> dict:
    return {INPUT_TOKENS: len(getattr(result, "input_ids", None) or [])}


def detokenize_before(args: dict) -> dict:
    recv = args["recv_obj"]
    rids = list(getattr(recv, "rids", None) or [])
    reasons = [r for r in (getattr(recv, "finished_reasons", None) or []) if r]
    return {BATCH_IDS: ids(rids), BATCH_SIZE: len(rids), FINISH_REASONS: [str(r.get("type", r)) if isinstance(r, dict) else str(r) for r in reasons]}


BEFORE = {
    "http.request": http_before,
    "request.render": render_before,
    "engine.enqueue": enqueue_before,
    "engine.step": step_before,
    "scheduler.schedule": schedule_before,
    "kv.match_prefix": match_before,
    "kv.allocate": allocate_before,
    "kv.insert": insert_before,
    "kv.evict": evict_before,
    "scheduler.preempt": preempt_before,
    "model.execute": execute_before,
    "model.forward": forward_before,
    "scheduler.update": update_before,
    "kv.free": free_before,
    "detokenize": detokenize_before,
}
def spec_propose_after(args: dict, result: Any) -> dict:
    # NGRAMWorker._prepare_draft_tokens -> (req_drafts, mask): speculative_num_draft_tokens tree nodes
    # per request, the first of which is the request's last verified token (the root).
    bs = len(args["batch"].reqs)
    return {SPEC_NUM_DRAFT: len(result[0]) - bs, SPEC_NUM_REQUESTS: bs}


def spec_verify_after(args: dict, result: Any) -> dict:
    # eagle_sample -> (predict, accept_lens, accept_index); accept_lens counts the bonus token. In a
    # draft tree the "rejected" nodes include branches never on the accepted path.
    accept_lens = result[1].tolist()
    bs = len(accept_lens)
    drafted = bs * (args["verify_input"].draft_token_num - 1)
    accepted = sum(accept_lens) - bs
    return {SPEC_NUM_DRAFT: drafted, SPEC_NUM_ACCEPTED: accepted, SPEC_NUM_REJECTED: drafted - accepted, SPEC_NUM_REQUESTS: bs}


AFTER = {
    "spec.propose": spec_propose_after,
    "spec.verify": spec_verify_after,
    "server.startup": startup_after,
    "request.render": render_after,
    "engine.enqueue": enqueue_after,
    "scheduler.schedule": schedule_after,
    "kv.match_prefix": match_after,
    "kv.allocate": allocate_after,
    "kv.insert": insert_after,
    "kv.evict": evict_after,
    "scheduler.preempt": preempt_after,
    "scheduler.update": update_after,
}
INJECT = {"engine.enqueue": Inject(enqueue_inject, before=True)}
CARRY = {"sglang.srt.managers.scheduler_components.output_sender:SenderWrapper.send_output": send_output_carry}
