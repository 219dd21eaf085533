"""Attribute extractors, one module per engine: BEFORE[hop](args) and AFTER[hop](args, result)
return span attributes. `args` maps the target's parameter names to the call's arguments.

Shared attribute keys (OpenTelemetry GenAI semantic conventions where one fits):
  gen_ai.request.id, gen_ai.request.max_tokens, gen_ai.request.temperature, gen_ai.request.top_p,
  gen_ai.request.top_k, gen_ai.usage.input_tokens, gen_ai.usage.output_tokens,
  gen_ai.response.finish_reasons; servetrace.* for engine internals. Every key is defined in tracer/traces/schema.py.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from tracer.traces.schema import DROP
from tracer.traces.schema import (  # noqa: F401  (the keys the extractor modules use, defined in the schema)
    ALLOCATED, BATCH_DECODE, BATCH_EXTERNAL_IDS, BATCH_FINISHED, BATCH_FINISHED_SINCE, BATCH_IDS, BATCH_NEW,
    BATCH_NEW_TOKENS, BATCH_PREEMPTED, BATCH_PREFILL, BATCH_QUEUE_LEN, BATCH_SIZE, BATCH_TOKENS, BATCH_TOTAL,
    BLOCK_HASHES, BLOCK_IDS, BLOCKS_ALLOCATED, BLOCKS_FREED, CACHED_BLOCKS, CACHED_TOKENS, EVICT_REQUESTED, EVICTABLE,
    EVICTED, EXTERNAL_ID, FINISH_REASONS, FORWARD_MODE, FREE_BLOCKS, HTTP_METHOD, HTTP_ROUTE, HTTP_STREAM,
    INPUT_TOKENS, KEY_TOKENS, KV_USAGE, MAX_TOKENS, MODEL_EXECUTED, MODEL_TOKENS, NEW_TOKENS, NUM_COMPUTED,
    NUM_NEW_COMPUTED, NUM_NEW_TOKENS, NUM_OUTPUTS, NUM_PREEMPTIONS, NUM_RUNNING, NUM_SAMPLED, NUM_WAITING,
    OPERATION, OUTPUT_TOKENS, PRIORITY, PROTECTED, REQUEST_ID, REQUEST_MODEL, STATUS, STEP, STOPPED_BY_STRING,
    TEMPERATURE, TEXT_CHARS, TOP_K, TOP_P,
    BATCH_RESUMED, CACHING_ENABLED, CONFIG_BLOCK_SIZE, CONFIG_POLICY, EVICTED_HASHES, PROMPT_TOKEN_IDS, HASH_DOMAIN, SCHED_CHUNKED, SCHED_MAX_SEQS, SCHED_TOKEN_BUDGET, WAITING_HEAD, WAITING_HEAD_BLOCKS, WAITING_HEAD_STATUS,
    SPEC_NUM_ACCEPTED, SPEC_NUM_DRAFT, SPEC_NUM_REJECTED, SPEC_NUM_REQUESTS,
    PENDING_STRUCTURED, PLACEHOLDER_REQUESTS_IN_FLIGHT, PLACEHOLDERS_ADDED, PLACEHOLDERS_OUTSTANDING,
)


Extractor = Callable[..., dict[str, Any]]


def extractors_for(engine: str, hop: str) -> tuple[Extractor | None, Extractor | None, Callable | None]:
    """(before, after, inject) of `hop` in the engine's module: BEFORE / AFTER read attributes;
    INJECT (optional) writes the trace context into what the call hands to another process."""
    module = importlib.import_module(f"tracer.instrument.extractors.{engine}")
    return module.BEFORE.get(hop), module.AFTER.get(hop), getattr(module, "INJECT", {}).get(hop)


def drop_if_for(engine: str, hop: str) -> Callable[[dict, Any], bool] | None:
    """The engine module's DROP_IF entry for `hop`: (args, result) -> True when the call was
    uneventful, exactly when its AFTER extractor would mark it DROP. Asked first, so that a span
    that ends dropped costs no after-extractor (tracer.instrument.spans.end)."""
    module = importlib.import_module(f"tracer.instrument.extractors.{engine}")
    return getattr(module, "DROP_IF", {}).get(hop)


def skip_if_for(engine: str, hop: str) -> Callable[[dict], bool] | None:
    """The engine module's SKIP_IF entry for `hop`: (args) -> True, before the call, only where DROP_IF
    would be True of any result it can return; the call then opens no span (spans.begin): a hop most
    of whose calls end dropped (kv.allocate in a decode step) costs no span bookkeeping for those."""
    module = importlib.import_module(f"tracer.instrument.extractors.{engine}")
    return getattr(module, "SKIP_IF", {}).get(hop)


def carrier_for(engine: str, spec: str) -> Callable | None:
    """The engine module's CARRY entry for a catalog carrier target: (args, _, _) -> None, puts the
    trace context of each request on the message the call sends."""
    module = importlib.import_module(f"tracer.instrument.extractors.{engine}")
    return getattr(module, "CARRY", {}).get(spec)


def spec_propose_counts(drafts: Iterable[Any]) -> dict[str, Any]:
    """spec.propose: one draft list per request (ours and vLLM's n-gram proposers return the same shape)."""
    lengths = [len(d) for d in drafts]
    return {SPEC_NUM_DRAFT: sum(lengths), SPEC_NUM_REQUESTS: sum(1 for n in lengths if n)}


def spec_verify_counts(num_draft_tokens: list[int], output_token_ids: Any, placeholder: int = -1) -> dict[str, Any]:
    """spec.verify: a rejection sampler's [batch, max_spec_len + 1] output, padded with placeholder;
    each request outputs its accepted drafts plus one token."""
    rows = output_token_ids.tolist() if hasattr(output_token_ids, "tolist") else output_token_ids
    accepted = sum(max(sum(1 for t in row if t != placeholder) - 1, 0) for row in rows)
    drafted = sum(num_draft_tokens)
    return {
        SPEC_NUM_DRAFT: drafted,
        SPEC_NUM_ACCEPTED: accepted,
        SPEC_NUM_REJECTED: drafted - accepted,
        SPEC_NUM_REQUESTS: sum(1 for n in num_draft_tokens if n),
    }


def ids(values: Iterable[Any]) -> list[str]:
    return [str(v) for v in values]


def sampling_attributes(params: Any) -> dict[str, Any]:
    """GenAI request attributes of a SamplingParams (ours and vLLM's share the field names)."""
    if params is None or not hasattr(params, "max_tokens"):
        return {}
    return {MAX_TOKENS: params.max_tokens, TEMPERATURE: params.temperature, TOP_P: params.top_p, TOP_K: params.top_k}


def request_attributes(request: Any) -> dict[str, Any]:
    """An engine-core Request (ours and vLLM's V1 Request share these names)."""
    return {REQUEST_ID: request.request_id, INPUT_TOKENS: request.num_prompt_tokens, NUM_COMPUTED: request.num_computed_tokens}


def queue_attributes(scheduler: Any) -> dict[str, Any]:
    """Running / waiting queue lengths of a V1-style scheduler (ours or vLLM's)."""
    return {NUM_RUNNING: len(scheduler.running), NUM_WAITING: len(scheduler.waiting)}


def waiting_head_attributes(waiting: Any, block_size: int) -> dict[str, Any]:
    """The waiting queue's head after a schedule(): whether it was blocked, and what it needs.
    With the step's budget, running count and free blocks (recorded beside it), `servetrace explain` names why it waited."""
    if not waiting:
        return {}
    head = waiting.peek_request()
    needed = -(-head.num_tokens // block_size) if block_size else 0
    return {WAITING_HEAD: str(head.request_id), WAITING_HEAD_STATUS: head.status.name, WAITING_HEAD_BLOCKS: needed}


def scheduler_limits(token_budget: int, max_num_seqs: int, chunked_prefill: bool, block_size: int, policy: Any) -> dict[str, Any]:
    return {SCHED_TOKEN_BUDGET: token_budget, SCHED_MAX_SEQS: max_num_seqs, SCHED_CHUNKED: bool(chunked_prefill),
            CONFIG_BLOCK_SIZE: block_size, CONFIG_POLICY: str(getattr(policy, "value", policy))}


def blocks_to_evict(pool: Any, num_blocks: int, hash_of: Callable[[Any], bytes]) -> dict[str, Any]:
    """BlockPool.get_new_blocks(num_blocks), before it runs: the cached blocks at the front of the
    free queue that it will take and evict (ours and vLLM's share the queue's layout: a linked list
    between a fake head and tail). No span when none of them was cached."""
    hashes, block = [], pool.free_block_queue.fake_free_list_head.next_free_block
    for _ in range(num_blocks if pool.enable_caching else 0):
        if block is None or block.block_id < 0:
            break
        if block.block_hash is not None:
            hashes.append(hash_of(block.block_hash).hex())
        block = block.next_free_block
    return {EVICTED_HASHES: hashes, DROP: not hashes}


def allocate_before(args: dict) -> dict:
    """KVCacheManager.allocate_slots (ours and vLLM's share the signature): the request and what it asks for."""
    request = args["request"]
    return {  # request_attributes(request), written out: ~1000 calls a run of 16 decoding requests
        REQUEST_ID: request.request_id, INPUT_TOKENS: request.num_prompt_tokens, NUM_COMPUTED: request.num_computed_tokens,
        NUM_NEW_TOKENS: args.get("num_new_tokens", 0),
        NUM_NEW_COMPUTED: args.get("num_new_computed_tokens", 0),
    }


def placeholder_attributes(args: dict, _: Any = None) -> dict[str, Any]:
    """overlap.placeholders, after AsyncScheduler._update_after_schedule(scheduler_output) (ours and
    vLLM's share the names): what the schedule added as output placeholders and what is outstanding."""
    scheduler, so = args["self"], args["scheduler_output"]
    per_step = getattr(scheduler, "num_sampled_tokens_per_step", 1)  # vLLM: 0 for diffusion, else 1
    spec = getattr(so, "scheduled_spec_decode_tokens", None) or {}
    added = outstanding = in_flight = 0
    for rid in so.num_scheduled_tokens:
        request = scheduler.requests.get(rid)
        if request is None:
            continue
        mine = 0 if request.is_prefill_chunk else per_step + len(spec.get(rid, ()))
        added += mine
        outstanding += request.num_output_placeholders
        in_flight += request.num_output_placeholders > mine
    return {
        STEP: getattr(scheduler, "current_step", None),
        PLACEHOLDERS_ADDED: added,
        PLACEHOLDERS_OUTSTANDING: outstanding,
        PLACEHOLDER_REQUESTS_IN_FLIGHT: in_flight,
        PENDING_STRUCTURED: bool(getattr(so, "pending_structured_output_tokens", False)),
    }
