"""Span attributes for vLLM 0.33.0 (V1). Read-only.

Ids: the API server knows the external id (what the client sent / cmpl-...); the EngineCore
keys everything by the internal id (external + "-" + 8 random chars). AsyncLLM.add_request
registers both as names of the same request trace (in the API-server process).

Context across processes (INJECT): the API server writes the request's trace context and its
external id into EngineCoreRequest.trace_headers (vLLM forwards that mapping to the EngineCore's
Request, vllm/v1/request.py:262, but AsyncLLM.add_request empties the caller's unless vLLM's own
OTLP flag is set: vllm/v1/engine/async_llm.py:421); the EngineCore sets the step's context on the
SchedulerOutput it hands the worker (a plain dataclass, pickled whole onto the shm broadcast
queue: vllm/v1/core/sched/output.py:232), where model.execute picks it up.
"""
from __future__ import annotations

import hashlib
from array import array
from typing import Any

from tracer.instrument.extractors import (
    allocate_before,
    BATCH_RESUMED,
    BATCH_EXTERNAL_IDS, BATCH_FINISHED_SINCE, BATCH_QUEUE_LEN, HTTP_STREAM, MODEL_EXECUTED, NEW_TOKENS,
    ALLOCATED, BATCH_DECODE, BATCH_FINISHED, BATCH_IDS, BATCH_NEW, BATCH_PREEMPTED, BATCH_PREFILL,
    BATCH_SIZE, BATCH_TOKENS, BATCH_TOTAL, BLOCK_IDS, BLOCKS_ALLOCATED, BLOCKS_FREED, CACHED_BLOCKS,
    CACHED_TOKENS, EXTERNAL_ID, FINISH_REASONS, FREE_BLOCKS, INPUT_TOKENS, KV_USAGE, MAX_TOKENS,
    MODEL_TOKENS, NUM_OUTPUTS, NUM_PREEMPTIONS,
    OPERATION, OUTPUT_TOKENS, PRIORITY, REQUEST_ID, STATUS, STEP, TEMPERATURE,
    ids, queue_attributes, request_attributes, sampling_attributes,
    CACHING_ENABLED, HASH_DOMAIN, blocks_to_evict, scheduler_limits, waiting_head_attributes,
    spec_propose_counts, spec_verify_counts,
)
from tracer.traces.schema import (
    CONFIG_ASYNC, CONFIG_BLOCK_SIZE, CONFIG_CHUNKED_PREFILL, CONFIG_LONG_PREFILL, CONFIG_MAX_BATCHED_TOKENS,
    CONFIG_MAX_MODEL_LEN, CONFIG_MAX_NUM_SEQS, CONFIG_NUM_BLOCKS, CONFIG_POLICY, CONFIG_PREFIX_CACHING,
)
from tracer.instrument import otel
from tracer.instrument.extractors import placeholder_attributes
from tracer.traces.schema import BLOCK_HASHES, FIRST_BLOCK_TOKENS_HASH, PROMPT_TOKEN_IDS
from tracer.traces.schema import ALIASES, CARRIER_EXTERNAL_ID, CARRIER_KEY, DROP, TRACEPARENT

# The attribute the EngineCore sets on a SchedulerOutput for the worker.
STEP_CARRIER_ATTRIBUTE = "servetrace_carrier"


def _kv(manager: Any) -> dict[str, Any]:
    return {FREE_BLOCKS: manager.block_pool.get_num_free_blocks(), KV_USAGE: float(manager.usage)}


def _block_ids(blocks: Any) -> list[int]:
    return [block_id for group in blocks.get_block_ids() for block_id in group]


# -- API-server process -------------------------------------------------------------------------


def http_before(args: dict) -> dict:
    request = args.get("request")
    raw = args.get("raw_request")
    out = {OPERATION: "chat" if hasattr(request, "messages") else "text_completion"}
    if request is not None:
        out[MAX_TOKENS] = getattr(request, "max_tokens", None) or getattr(request, "max_completion_tokens", None)
        out[TEMPERATURE] = getattr(request, "temperature", None)
        out[HTTP_STREAM] = bool(getattr(request, "stream", False))
    headers = getattr(raw, "headers", None)
    if headers is not None:
        out[TRACEPARENT] = headers.get("traceparent")
        out[REQUEST_ID] = headers.get("x-request-id")
    return out


def render_after(args: dict, result: Any) -> dict:
    token_ids = None
    if isinstance(result, list) and result and isinstance(result[0], dict):
        token_ids = result[0].get("prompt_token_ids")
    elif hasattr(result, "prompt_token_ids"):  # process_inputs -> EngineCoreRequest
        token_ids = result.prompt_token_ids
        return {REQUEST_ID: result.request_id, INPUT_TOKENS: len(token_ids or []), **sampling_attributes(result.sampling_params)}
    return {INPUT_TOKENS: len(token_ids)} if token_ids is not None else {}


def render_before(args: dict) -> dict:
    return {REQUEST_ID: args.get("request_id")} if "request_id" in args else {}


def async_enqueue_before(args: dict) -> dict:
    headers = args.get("trace_headers") or {}
    return {
        REQUEST_ID: args.get("request_id"),
        PRIORITY: args.get("priority"),
        TRACEPARENT: headers.get("traceparent"),
        **sampling_attributes(args.get("params")),
    }


def async_enqueue_after(args: dict, collector: Any) -> dict:
    internal = getattr(collector, "request_id", None)
    return {EXTERNAL_ID: args.get("request_id"), ALIASES: [internal] if internal else []}


def detokenize_before(args: dict) -> dict:
    processor = args["self"]
    outputs = args.get("engine_core_outputs") or []
    external = []
    for output in outputs:
        state = processor.request_states.get(output.request_id)
        external.append(state.external_req_id if state is not None and state.external_req_id else output.request_id)
    return {BATCH_IDS: ids(o.request_id for o in outputs), BATCH_EXTERNAL_IDS: external, BATCH_SIZE: len(outputs)}


def detokenize_after(args: dict, result: Any) -> dict:
    outputs = args.get("engine_core_outputs") or []
    finished = [o for o in outputs if o.finish_reason is not None]
    return {
        BATCH_FINISHED: ids(o.request_id for o in finished),
        FINISH_REASONS: [str(o.finish_reason) for o in finished],
        NEW_TOKENS: sum(len(o.new_token_ids) for o in outputs),
    }


# -- EngineCore process ---------------------------------------------------------------------------


def enqueue_before(args: dict) -> dict:
    request = args["request"]
    headers = getattr(request, "trace_headers", None) or {}
    return {
        **request_attributes(request),
        PRIORITY: request.priority,
        TRACEPARENT: headers.get(CARRIER_KEY) or headers.get("traceparent"),
        EXTERNAL_ID: headers.get(CARRIER_EXTERNAL_ID) or getattr(request, "external_req_id", None),
        # What a replay of the trace needs without the prompt: the full blocks' hashes (vLLM's own,
        # vllm/v1/request.py: Request.block_hashes); the token ids only when content capture is on.
        BLOCK_HASHES: [bytes(h).hex() for h in getattr(request, "block_hashes", None) or ()],
        PROMPT_TOKEN_IDS: list(request.prompt_token_ids or ()) if otel.capture_content() else None,
        HASH_DOMAIN: _hash_domain(request),
        FIRST_BLOCK_TOKENS_HASH: _first_block_tokens_hash(request, getattr(args["self"], "scheduler", args["self"])),
        **sampling_attributes(request.sampling_params),
    }


def _hash_domain(request: Any) -> str | None:
    """What vLLM mixes into the block hashes besides the tokens (vllm/v1/core/kv_cache_utils.py:637-675
    generate_block_hash_extra_keys: the LoRA name and path in every block, lines 590-607, and the cache
    salt in the first block, lines 659-663; hash_block_tokens, 707-737, chains each block's hash to its
    parent's, so a salt changes them all). The salt as a digest (two salts, two domains), never itself."""
    parts = []
    lora = getattr(request, "lora_request", None)
    if lora is not None:
        parts.append(f"lora:{lora.lora_name}")  # (its path, which vLLM mixes in too, left out)
    salt = getattr(request, "cache_salt", None)
    if salt:
        parts.append("salted:" + hashlib.blake2b(str(salt).encode(), digest_size=6, person=b"servetrace-ns").hexdigest())
    return ",".join(parts) or None


def _first_block_tokens_hash(request: Any, scheduler: Any) -> str | None:
    """The first full block's token ids alone (vLLM's own hash mixes the domain in): explain tells two
    domains' same prompt from two prompts without content capture. Never the tokens themselves."""
    size = getattr(scheduler, "block_size", None)
    tokens = request.prompt_token_ids or ()
    if not size or len(tokens) < size:
        return None
    return hashlib.blake2b(array("q", tokens[:size]).tobytes(), digest_size=6, person=b"servetrace-tok").hexdigest()


def enqueue_after(args: dict, _: Any) -> dict:
    owner = args["self"]
    scheduler = getattr(owner, "scheduler", owner)
    return queue_attributes(scheduler) if hasattr(scheduler, "running") else {}


def step_before(args: dict) -> dict:
    scheduler = args["self"].scheduler
    out = queue_attributes(scheduler)
    batch_queue = getattr(args["self"], "batch_queue", None)
    if batch_queue is not None:
        out[BATCH_QUEUE_LEN] = len(batch_queue)
    return out


def step_after(args: dict, result: Any) -> dict:
    outputs, executed = result
    finished = []
    num_outputs = 0
    for engine_outputs in (outputs or {}).values():
        num_outputs += len(engine_outputs.outputs)
        finished += [o.request_id for o in engine_outputs.outputs if o.finish_reason is not None]
    return {
        MODEL_EXECUTED: bool(executed),
        NUM_OUTPUTS: num_outputs,
        BATCH_FINISHED: finished,
        **queue_attributes(args["self"].scheduler),
        # A busy-loop turn with nothing to do (EngineCore.step returns early without requests):
        # no span, unless the scheduler ran inside it.
        DROP: not executed and num_outputs == 0,
    }


def schedule_after(args: dict, so: Any) -> dict:
    scheduler = args["self"]
    request_ids = list(so.num_scheduled_tokens)
    prefill = 0
    for rid in request_ids:
        request = scheduler.requests.get(rid)
        # num_computed_tokens was advanced at schedule time (_update_after_schedule).
        if request is not None and request.num_computed_tokens - so.num_scheduled_tokens[rid] < request.num_prompt_tokens:
            prefill += 1
    return {
        STEP: getattr(scheduler, "current_step", None),
        BATCH_IDS: request_ids,
        BATCH_TOKENS: [so.num_scheduled_tokens[rid] for rid in request_ids],
        BATCH_TOTAL: so.total_num_scheduled_tokens,
        BATCH_SIZE: len(request_ids),
        BATCH_PREFILL: prefill,
        BATCH_DECODE: len(request_ids) - prefill,
        BATCH_NEW: len(so.scheduled_new_reqs),
        BATCH_PREEMPTED: ids(so.preempted_req_ids or ()),
        BATCH_RESUMED: ids(getattr(so.scheduled_cached_reqs, "resumed_req_ids", None) or ()),
        BATCH_FINISHED_SINCE: ids(so.finished_req_ids or ()),
        **queue_attributes(scheduler),
        **_kv(scheduler.kv_cache_manager),
        # The waiting loop's limits (vllm/v1/core/sched/scheduler.py, Scheduler.schedule: `while
        # token_budget > 0`, `num_running >= self.max_num_active_reqs`, and without chunked prefill
        # a prompt larger than the budget left stops it), read after the call.
        **scheduler_limits(scheduler.max_num_scheduled_tokens, getattr(scheduler, "max_num_active_reqs", scheduler.max_num_running_reqs),
                           scheduler.scheduler_config.enable_chunked_prefill, scheduler.block_size, scheduler.policy),
        **waiting_head_attributes(scheduler.waiting, scheduler.block_size),
    }


def match_before(args: dict) -> dict:
    return request_attributes(args["request"])


def match_after(args: dict, result: Any) -> dict:
    blocks, num_tokens = result[0], result[1]
    block_ids = _block_ids(blocks)
    return {CACHED_TOKENS: num_tokens, CACHED_BLOCKS: len(block_ids), BLOCK_IDS: block_ids,
            CACHING_ENABLED: args["self"].enable_caching}


def allocate_uneventful(args: dict, blocks: Any) -> bool:
    """A decode step that still fits its last block changed nothing worth a span (DROP_IF)."""
    return blocks is not None and not args.get("num_new_computed_tokens") and not any(blocks.get_block_ids())


def allocate_after(args: dict, blocks: Any) -> dict:
    out = {ALLOCATED: blocks is not None, **_kv(args["self"])}
    if blocks is not None:
        block_ids = _block_ids(blocks)
        out[BLOCKS_ALLOCATED] = len(block_ids)
        out[BLOCK_IDS] = block_ids
        out[DROP] = allocate_uneventful(args, blocks)
    return out


def evict_before(args: dict) -> dict:
    # BlockPool.get_new_blocks evicts what it takes (vllm/v1/core/block_pool.py:_maybe_evict_cached_block);
    # its keys are BlockHashWithGroupId: the block hash plus 4 bytes of group id (kv_cache_utils.get_block_hash).
    return blocks_to_evict(args["self"], args["num_blocks"], lambda key: bytes(key)[:-4])


def evict_after(args: dict, _: Any) -> dict:
    return {FREE_BLOCKS: args["self"].get_num_free_blocks()}


def preempt_before(args: dict) -> dict:
    return request_attributes(args["request"])


def preempt_after(args: dict, _: Any) -> dict:
    request = args["request"]
    return {NUM_PREEMPTIONS: request.num_preemptions, STATUS: request.status.name, **_kv(args["self"].kv_cache_manager)}


def update_before(args: dict) -> dict:
    so = args["scheduler_output"]
    return {BATCH_SIZE: len(so.num_scheduled_tokens), BATCH_TOTAL: so.total_num_scheduled_tokens}


def update_after(args: dict, result: Any) -> dict:
    finished, reasons, num_outputs = [], [], 0
    for engine_outputs in (result or {}).values():
        num_outputs += len(engine_outputs.outputs)
        for output in engine_outputs.outputs:
            if output.finish_reason is not None:
                finished.append(output.request_id)
                reasons.append(str(output.finish_reason))
    return {NUM_OUTPUTS: num_outputs, BATCH_FINISHED: finished, FINISH_REASONS: reasons, **queue_attributes(args["self"])}


def free_before(args: dict) -> dict:
    request, manager = args["request"], args["self"]
    out = {
        REQUEST_ID: request.request_id,
        STATUS: request.status.name,
        BLOCKS_FREED: len(_block_ids(manager.get_blocks(request.request_id))),
    }
    if request.is_finished():
        out[OUTPUT_TOKENS] = request.num_output_tokens
        reason = request.get_finished_reason()
        out[FINISH_REASONS] = [str(reason)] if reason is not None else []
    return out


def free_after(args: dict, _: Any) -> dict:
    return _kv(args["self"])


def execute_before(args: dict) -> dict:
    so = args.get("scheduler_output")
    if so is None:
        return {}
    carrier = getattr(so, STEP_CARRIER_ATTRIBUTE, None) or {}
    return {
        MODEL_TOKENS: so.total_num_scheduled_tokens,
        BATCH_SIZE: len(so.num_scheduled_tokens),
        TRACEPARENT: carrier.get(CARRIER_KEY),
    }


def startup_after(args: dict, kv_cache_config: Any) -> dict:
    """EngineCore._initialize_kv_caches: the config a replay of this server's trace needs."""
    config = args["vllm_config"]
    scheduler, cache = config.scheduler_config, config.cache_config
    return {
        CONFIG_MAX_NUM_SEQS: scheduler.max_num_seqs,
        CONFIG_MAX_BATCHED_TOKENS: scheduler.max_num_batched_tokens,
        CONFIG_MAX_MODEL_LEN: config.model_config.max_model_len,
        CONFIG_CHUNKED_PREFILL: scheduler.enable_chunked_prefill,
        CONFIG_LONG_PREFILL: scheduler.long_prefill_token_threshold,
        CONFIG_POLICY: str(scheduler.policy),
        CONFIG_ASYNC: bool(scheduler.async_scheduling),
        CONFIG_BLOCK_SIZE: cache.block_size,
        CONFIG_PREFIX_CACHING: bool(cache.enable_prefix_caching),
        CONFIG_NUM_BLOCKS: getattr(kv_cache_config, "num_blocks", None),
    }


# -- carrying the context to the next process --------------------------------------------------------


def render_inject(args: dict, result: Any, carrier: dict) -> None:
    """process_inputs built the EngineCoreRequest that goes to the EngineCore: carry the request's
    trace and its external id (the id is made internal after this call: async_llm.py:521)."""
    if hasattr(result, "trace_headers") and hasattr(result, "request_id"):
        result.trace_headers = {**(result.trace_headers or {}), **carrier, CARRIER_EXTERNAL_ID: result.request_id}


def schedule_inject(args: dict, result: Any, carrier: dict) -> None:
    """The SchedulerOutput goes to the worker: carry the step's trace."""
    if result is not None:
        setattr(result, STEP_CARRIER_ATTRIBUTE, carrier)


INJECT = {"request.render": render_inject, "scheduler.schedule": schedule_inject}


def forward_before(args: dict) -> dict:
    input_ids = args.get("input_ids")
    return {MODEL_TOKENS: int(input_ids.shape[0])} if hasattr(input_ids, "shape") else {}


BEFORE = {
    "http.request": http_before,
    "request.render": render_before,
    "engine.enqueue": lambda args: (enqueue_before if "request" in args else async_enqueue_before)(args),
    "engine.step": step_before,
    "kv.match_prefix": match_before,
    "kv.allocate": allocate_before,
    "kv.evict": evict_before,
    "scheduler.preempt": preempt_before,
    "model.execute": execute_before,
    "model.forward": forward_before,
    "scheduler.update": update_before,
    "kv.free": free_before,
    "detokenize": detokenize_before,
}
AFTER = {
    "overlap.placeholders": placeholder_attributes,
    # AsyncOutputFuture.result: the step's ModelRunnerOutput (single_value, the engine core's calls).
    "overlap.wait": lambda args, output: {BATCH_SIZE: len(getattr(output, "req_ids", None) or ())},
    "spec.propose": lambda args, drafts: spec_propose_counts(drafts),
    # RejectionSampler.forward returns a SamplerOutput; rejected positions hold PLACEHOLDER_TOKEN_ID (-1).
    "spec.verify": lambda args, out: spec_verify_counts(args["metadata"].num_draft_tokens, out.sampled_token_ids),
    "server.startup": startup_after,
    "request.render": render_after,
    "engine.enqueue": lambda args, result: (enqueue_after if "request" in args else async_enqueue_after)(args, result),
    "engine.step": step_after,
    "scheduler.schedule": schedule_after,
    "kv.match_prefix": match_after,
    "kv.allocate": allocate_after,
    "kv.evict": evict_after,
    "scheduler.preempt": preempt_after,
    "scheduler.update": update_after,
    "kv.free": free_after,
    "detokenize": detokenize_after,
}
DROP_IF = {"kv.allocate": allocate_uneventful}  # asked before AFTER (extractors.drop_if_for)
