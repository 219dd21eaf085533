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
    BATCH_FINISHED, BATCH_IDS, BATCH_SIZE, CACHED_TOKENS, EVICT_REQUESTED, EVICTABLE,
    EVICTED, FINISH_REASONS, FORWARD_MODE, INPUT_TOKENS, KEY_TOKENS, MAX_TOKENS, NUM_WAITING,
    OPERATION, OUTPUT_TOKENS, PROTECTED, REQUEST_ID, TEMPERATURE, TOP_K, TOP_P, ids,
    SPEC_NUM_ACCEPTED, SPEC_NUM_DRAFT, SPEC_NUM_REJECTED, SPEC_NUM_REQUESTS,
)
from tracer.instrument import carriers
from tracer.traces.schema import FROM_FUTURE
from tracer.instrument.registry import registry
from tracer.instrument.hop_call import Inject
from tracer.instrument.spans import traceparent
from tracer.traces.schema import (
    CARRIER_KEY, CHECKPOINT, CHECKPOINT_UP_TO, CONFIG_BLOCK_SIZE, CONFIG_CHUNKED_PREFILL,
    CONFIG_MAX_BATCHED_TOKENS, CONFIG_MAX_NUM_SEQS, CONFIG_MAX_TOTAL_TOKENS, CONFIG_POLICY, CONFIG_PREFIX_CACHING,
    HTTP_REQUEST_ID_HEADER, HTTP_STREAM, RADIX_NODE_ID as NODE_ID, TRACEPARENT,
    CACHING_ENABLED, HASH_DOMAIN, PROMPT_TOKEN_IDS, RADIX_HASH_TOKENS,
    RADIX_PREFIX_HASHES,
)
from tracer.instrument import otel
from tracer.instrument.extractors.sglang_radix import (
    evicted_nodes, first_sight, hash_domain, hash_unit, next_page, prefix_hashes, radix_path, stash_evict_candidates,
)
from tracer.instrument.extractors.sglang_scheduler import (
    allocate_after, allocate_before, batch_attrs, preempt_after, preempt_before, rid_of, schedule_after, schedule_before,
    step_before,
)



def _sizes(cache: Any) -> dict[str, Any]:
    return {EVICTABLE: cache.evictable_size(), PROTECTED: cache.protected_size()}


def _sampling(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    return {
        MAX_TOKENS: getattr(params, "max_new_tokens", None),
        TEMPERATURE: getattr(params, "temperature", None),
        TOP_P: getattr(params, "top_p", None),
        TOP_K: getattr(params, "top_k", None),
    }


# -- radix cache ----------------------------------------------------------------------------------


def match_before(args: dict) -> dict:
    params = args["params"]
    return {REQUEST_ID: rid_of(params.req), KEY_TOKENS: len(params.key)}


def match_after(args: dict, result: Any) -> dict:
    cache, params = args["self"], args["params"]
    node = result.last_device_node
    page = int(getattr(cache, "page_size", 1) or 1)
    out = {CACHED_TOKENS: result.device_prefix_len, NODE_ID: getattr(node, "id", None), **_sizes(cache),
           CONFIG_BLOCK_SIZE: page, CACHING_ENABLED: not getattr(cache, "disable", False), **radix_path(node),
           **next_page(params.key, result.device_prefix_len, page)}
    req = params.req
    rid = rid_of(req)
    if rid is not None and first_sight(req):  # the prompt's hashes once per request: lpm matches every waiting request each pass
        tokens = getattr(req, "origin_input_ids", None) or []
        key = params.key
        unit = hash_unit(page)
        out[RADIX_HASH_TOKENS], out[RADIX_PREFIX_HASHES] = unit, prefix_hashes(tokens, unit)
        out[HASH_DOMAIN] = hash_domain(getattr(key, "extra_key", None), getattr(key, "cache_salt", None))
        out[PROMPT_TOKEN_IDS] = list(tokens) if otel.capture_content() else None
    return out


def insert_before(args: dict) -> dict:
    if "params" in args:
        key = args["params"].key
        return {KEY_TOKENS: len(key) if key is not None else None}
    return {REQUEST_ID: rid_of(args.get("req")), CHECKPOINT_UP_TO: args.get("up_to")}  # checkpoint(req, up_to=)


def insert_after(args: dict, result: Any) -> dict:
    out = _sizes(args["self"])
    if result is not None and hasattr(result, "prefix_len"):
        out[CACHED_TOKENS] = result.prefix_len
    return out


def evict_before(args: dict) -> dict:
    stash_evict_candidates(args, args["self"])
    return {EVICT_REQUESTED: args["params"].num_tokens}


def evict_after(args: dict, result: Any) -> dict:
    return {EVICTED: result.num_tokens_evicted, **_sizes(args["self"]), **evicted_nodes(args, args["self"])}


def free_before(args: dict) -> dict:
    req = args["req"]
    finished = getattr(req, "finished_reason", None)
    return {
        REQUEST_ID: rid_of(req),
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
        REQUEST_ID: rid_of(req),
        INPUT_TOKENS: len(getattr(req, "input_ids", None) or []),
        **_sampling(getattr(req, "sampling_params", None)),
    }


def enqueue_after(args: dict, _: Any) -> dict:
    scheduler = args["self"]
    return {NUM_WAITING: len(scheduler.waiting_queue)} if hasattr(scheduler, "waiting_queue") else {}


# What one get_next_batch_to_run pass decided, gathered from the calls inside it: its PrefillAdder is
# a local of _get_new_batch_prefill_raw (scheduler.py:4157), seen only by add_one_req's extractor.
def execute_before(args: dict) -> dict:
    return batch_attrs(args.get("batch"))


def forward_before(args: dict) -> dict:
    forward_batch = args.get("forward_batch")
    mode = getattr(forward_batch, "forward_mode", None)
    return {BATCH_SIZE: getattr(forward_batch, "batch_size", None), FORWARD_MODE: getattr(mode, "name", None)}


def update_before(args: dict) -> dict:
    return batch_attrs(args.get("batch"))


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
    rid = rid_of(tokenized)
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
    return {REQUEST_ID: rid_of(args.get("obj"))}


def render_after(args: dict, result: Any) -> dict:
    return {INPUT_TOKENS: len(getattr(result, "input_ids", None) or [])}


def detokenize_before(args: dict) -> dict:
    recv = args["recv_obj"]
    rids = list(getattr(recv, "rids", None) or [])
    reasons = [r for r in (getattr(recv, "finished_reasons", None) or []) if r]
    return {BATCH_IDS: ids(rids), BATCH_SIZE: len(rids), FINISH_REASONS: [str(r.get("type", r)) if isinstance(r, dict) else str(r) for r in reasons]}


def resolve_inputs_before(args: dict) -> dict:
    """resolve_forward_inputs(batch, future_map): a batch with no prefill staging and no input ids
    takes them from the FutureMap (the previous batch's sampled tokens)."""
    batch = args["batch"]
    mode = getattr(batch, "forward_mode", None)
    return {BATCH_SIZE: len(batch.reqs), FORWARD_MODE: getattr(mode, "name", None),
            FROM_FUTURE: getattr(batch, "prefill_input_ids_cpu", None) is None and batch.input_ids is None}


BEFORE = {
    "overlap.placeholders": resolve_inputs_before,
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
