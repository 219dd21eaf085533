"""Span attributes for the compact engine (engine/). Read-only: nothing here changes engine state."""
from __future__ import annotations

from typing import Any

from tracer.instrument import otel
from tracer.instrument.extractors import (
    allocate_before,
    BATCH_RESUMED,
    ALLOCATED, BATCH_DECODE, BATCH_FINISHED, BATCH_IDS, BATCH_NEW, BATCH_NEW_TOKENS, BATCH_PREEMPTED, BATCH_PREFILL,
    BATCH_SIZE, BATCH_TOKENS, BATCH_TOTAL, BLOCK_IDS, BLOCKS_ALLOCATED, BLOCKS_FREED, CACHED_BLOCKS,
    CACHED_TOKENS, EVICT_REQUESTED, EVICTABLE, EVICTED, FINISH_REASONS, FREE_BLOCKS, INPUT_TOKENS,
    KEY_TOKENS, KV_USAGE, MAX_TOKENS, MODEL_TOKENS, NEW_TOKENS, NUM_COMPUTED, NUM_OUTPUTS, NUM_PREEMPTIONS, NUM_SAMPLED, OPERATION,
    OUTPUT_TOKENS, PRIORITY, PROTECTED, REQUEST_ID, STATUS, STEP, STOPPED_BY_STRING, TEMPERATURE, TEXT_CHARS,
    TOP_P, ids, queue_attributes, request_attributes, sampling_attributes, scheduler_limits, waiting_head_attributes,
    BLOCK_HASHES, CACHING_ENABLED, PROMPT_TOKEN_IDS, blocks_to_evict, placeholder_attributes,
)
from tracer.instrument.extractors import mini_decoding, mini_sglang
from tracer.instrument.extractors.sglang_radix import (
    evicted_nodes, first_sight, hash_unit, next_page, prefix_hashes, radix_path, stash_evict_candidates,
)
from tracer.traces.schema import CONFIG_BLOCK_SIZE, RADIX_HASH_TOKENS, RADIX_NODE_ID, RADIX_PREFIX_HASHES
from tracer.traces.schema import CONFIG_ASYNC, CONFIG_LONG_PREFILL, CONFIG_MAX_MODEL_LEN, CONFIG_NUM_BLOCKS, CONFIG_PREFIX_CACHING
from tracer.traces.schema import CONFIG_SERIAL_STEP
from tracer.traces.schema import (
    BATCH_QUEUE_LEN, DROP, GRAMMAR_COMPLETE, GRAMMAR_KIND,
    HTTP_METHOD, HTTP_ROUTE, HTTP_STATUS, HTTP_STREAM, REQUEST_MODEL, TRACEPARENT,
)

# OpenTelemetry HTTP semantic conventions (the GenAI ones are in tracer.instrument.extractors)

def _kv(manager: Any) -> dict[str, Any]:
    return {FREE_BLOCKS: manager.get_num_free_blocks(), KV_USAGE: manager.usage}


def http_before(args: dict) -> dict:
    """OpenAIServing.create_completion / create_chat_completion: the request body and the raw
    starlette Request. The request id is assigned inside the call; the engine.enqueue span
    nested in it hands it up (tracer.instrument.spans), and a JSON response carries it as `id`."""
    request, raw = args["request"], args.get("raw_request")
    chat = hasattr(request, "messages")
    max_tokens = request.max_completion_tokens if chat and request.max_completion_tokens is not None else request.max_tokens
    out = {
        OPERATION: "chat" if chat else "text_completion",
        REQUEST_MODEL: request.model,
        HTTP_STREAM: request.stream,
        MAX_TOKENS: max_tokens,
        TEMPERATURE: request.temperature,
        TOP_P: request.top_p,
    }
    if raw is not None:
        route = raw.scope.get("route")
        out[HTTP_METHOD] = raw.method
        out[HTTP_ROUTE] = getattr(route, "path", None) or raw.url.path
        out[TRACEPARENT] = raw.headers.get("traceparent")
    return out


def http_after(args: dict, response: Any) -> dict:
    # A stream's span ends when the stream does (tracer.instrument.hooks); `response` is then the generator,
    # and the token counts are on the request's engine spans (kv.free).
    out = {HTTP_STATUS: 200}
    usage = getattr(response, "usage", None)
    if usage is not None:
        out[REQUEST_ID] = response.id
        out[INPUT_TOKENS] = usage.prompt_tokens
        out[OUTPUT_TOKENS] = usage.completion_tokens
        out[FINISH_REASONS] = [choice.finish_reason for choice in response.choices]
    return out


def render_after(args: dict, token_ids: list[int]) -> dict:
    return {OPERATION: "chat" if "messages" in args else "text_completion", INPUT_TOKENS: len(token_ids)}


def enqueue_before(args: dict) -> dict:
    request = args.get("request")  # Scheduler.add_request (replay drives the scheduler directly)
    if request is not None:
        params, request_id, prompt, priority = request.sampling_params, request.request_id, request.prompt_token_ids, request.priority
    else:  # LLMEngine.add_request
        params, request_id = args.get("sampling_params"), args.get("request_id")
        prompt, priority = args.get("prompt_token_ids"), args.get("priority")
    out = {REQUEST_ID: request_id, INPUT_TOKENS: len(prompt or [])}
    out.update(sampling_attributes(params))
    out[PRIORITY] = priority
    return out


def enqueue_after(args: dict, request: Any) -> dict:
    if "request" in args:
        request, scheduler = args["request"], args["self"]
    else:
        scheduler = args["self"].scheduler
    # The prompt's full-block hashes (Scheduler.add_request computes them): what explain and a
    # replay of the trace need without the tokens.
    hashes = [bytes(h).hex() for h in request.block_hashes[: request.num_prompt_tokens // scheduler.block_size]]
    return {REQUEST_ID: request.request_id, BLOCK_HASHES: hashes or None, **queue_attributes(scheduler),
            PROMPT_TOKEN_IDS: list(request.prompt_token_ids) if otel.capture_content() else None}


def step_before(args: dict) -> dict:
    return queue_attributes(args["self"].scheduler)


def step_after(args: dict, outputs: list) -> dict:
    engine = args["self"]
    finished = [o for o in outputs if o.finished]
    batch_queue = getattr(engine, "batch_queue", None)
    return {
        STEP: engine.scheduler.current_step,
        BATCH_QUEUE_LEN: len(batch_queue) if batch_queue is not None else None,
        NUM_OUTPUTS: len(outputs),
        BATCH_FINISHED: ids(o.request_id for o in finished),
        **queue_attributes(engine.scheduler),
        CONFIG_SERIAL_STEP: _serial_step_max_tokens(engine),
    }


def _serial_step_max_tokens(engine: Any) -> int | None:
    """The engine's rule for steps it computes on one thread (engine/cpu_gemm.py compute_threads_for):
    a step's cost changes with it, and a what-if replay prices steps by it (tracer/replay/whatif/step_time.py)."""
    runner = getattr(engine, "model_runner", None)
    device = getattr(runner, "device", None)
    if device is None:
        return None
    from engine.cpu_gemm import serial_step_max_tokens

    return serial_step_max_tokens(device, getattr(runner, "omp_passive_wait", None))


def schedule_after(args: dict, so: Any) -> dict:
    scheduler = args["self"]
    request_ids = list(so.num_scheduled_tokens)
    requests, computed, prefill = scheduler.requests, so.num_computed_tokens, 0
    for rid in request_ids:  # a request still in its prompt (a loop, not a call per request: every step)
        request = requests.get(rid)
        prefill += computed.get(rid, 0) < (request.num_prompt_tokens if request is not None else 0)
    return {
        STEP: so.step,
        BATCH_IDS: request_ids,
        BATCH_TOKENS: [so.num_scheduled_tokens[rid] for rid in request_ids],
        BATCH_TOTAL: so.total_num_scheduled_tokens,
        BATCH_SIZE: len(request_ids),
        BATCH_PREFILL: prefill,
        BATCH_DECODE: len(request_ids) - prefill,
        BATCH_NEW: len(so.scheduled_new_reqs),
        BATCH_PREEMPTED: ids(so.preempted_req_ids),
        BATCH_RESUMED: ids(getattr(so.scheduled_cached_reqs, "resumed_req_ids", None) or ()),
        **queue_attributes(scheduler),
        **_kv(scheduler.kv_cache_manager),
        **_why_waiting(scheduler),
        **_replay_config(scheduler),
        **(mini_sglang.schedule_state(scheduler) if mini_sglang.is_sglang_mode(scheduler) else {}),
    }


def _replay_config(scheduler: Any) -> dict:
    """The rest of the config a replay of the trace needs (vLLM's is on its server.startup span;
    ours has no startup hop): the pool's blocks, the longest sequence, the chunk cap, prefix caching."""
    config = scheduler.scheduler_config
    return {
        CONFIG_NUM_BLOCKS: getattr(scheduler.kv_cache_manager, "num_blocks", None),
        CONFIG_MAX_MODEL_LEN: config.max_model_len,
        CONFIG_LONG_PREFILL: config.long_prefill_token_threshold,
        CONFIG_PREFIX_CACHING: getattr(getattr(scheduler, "cache_config", None), "enable_prefix_caching", None),
        CONFIG_ASYNC: getattr(config, "async_scheduling", None),
    }


def _why_waiting(scheduler: Any) -> dict:
    config = scheduler.scheduler_config
    return {
        **scheduler_limits(config.max_num_batched_tokens, config.max_num_seqs, config.enable_chunked_prefill, scheduler.block_size, config.policy),
        **waiting_head_attributes(scheduler.waiting, scheduler.block_size),
    }


def match_before(args: dict) -> dict:
    if "request" in args:
        return request_attributes(args["request"])
    # RadixCache.match_prefix(key, req): cache_mode sglang hands the request over, as SGLang's
    # MatchPrefixParams.req; a lookup on the tree's own behalf (checkpoint) has none.
    req = args.get("req")
    return {REQUEST_ID: getattr(req, "request_id", None), KEY_TOKENS: len(args["key"])}


def match_after(args: dict, result: Any) -> dict:
    if "request" in args:
        blocks, num_tokens = result
        return {CACHED_TOKENS: num_tokens, CACHED_BLOCKS: len(blocks), BLOCK_IDS: [b.block_id for b in blocks],
                CACHING_ENABLED: args["self"].enable_caching}
    # What SGLang's extractor records of its tree (tracer/instrument/extractors/sglang.py: match_after).
    cache, node, req = args["self"], result.last_node, args.get("req")
    page = int(cache.page_size)
    out = {CACHED_TOKENS: result.prefix_len, RADIX_NODE_ID: node.id, CONFIG_BLOCK_SIZE: page,
           CACHING_ENABLED: not cache.disable, EVICTABLE: cache.evictable_size(), PROTECTED: cache.protected_size(),
           **radix_path(node), **next_page(args["key"], result.prefix_len, page)}
    if req is not None and first_sight(req):  # once per request: the lpm pass looks every waiting request up
        tokens = list(req.prompt_token_ids)
        out[RADIX_HASH_TOKENS], out[RADIX_PREFIX_HASHES] = hash_unit(page), prefix_hashes(tokens, hash_unit(page))
        out[PROMPT_TOKEN_IDS] = tokens if otel.capture_content() else None
    return out


def allocate_before_any(args: dict) -> dict:
    return mini_sglang.add_before(args) if "entry" in args else allocate_before(args)


def allocate_uneventful(args: dict, new_blocks: Any) -> bool:
    """A decode step that still fits its last block changed nothing worth a span (DROP_IF)."""
    return new_blocks is not None and not new_blocks and "entry" not in args and not args.get("num_new_computed_tokens")


def allocate_takes_no_block(args: dict) -> bool:
    """Before the call (SKIP_IF): a running request's step whose tokens fit the blocks it holds, with no
    computed tokens to adopt: allocate_slots can only return no new blocks, which allocate_uneventful
    drops. The manager's own count (KVCacheManager._get_num_blocks_to_allocate, which changes nothing);
    a call allocate_slots would refuse (no tokens, a negative count) is never skipped, so it is traced."""
    if "entry" in args or args.get("num_new_computed_tokens") or args.get("new_computed_blocks") \
            or args.get("full_sequence_must_fit"):
        return False
    manager, request, num_new_tokens = args["self"], args["request"], args.get("num_new_tokens", 0)
    lookahead = args.get("num_lookahead_tokens", 0)
    if num_new_tokens <= 0 or lookahead < 0:
        return False
    num_tokens = min(request.num_computed_tokens + num_new_tokens + lookahead, manager.max_model_len)
    return manager._get_num_blocks_to_allocate(request.request_id, num_tokens, ()) == 0


def allocate_after(args: dict, new_blocks: Any) -> dict:
    if "entry" in args:  # PrefillAdder.add_one_req in cache_mode sglang: an AddReqResult
        return mini_sglang.add_after(args, new_blocks)
    out = {ALLOCATED: new_blocks is not None, **_kv(args["self"])}
    if new_blocks is not None:
        out[BLOCKS_ALLOCATED] = len(new_blocks)
        out[BLOCK_IDS] = [b.block_id for b in new_blocks]
        out[DROP] = allocate_uneventful(args, new_blocks)
    return out


def insert_before(args: dict) -> dict:
    if "request" in args:
        return {REQUEST_ID: args["request"].request_id, NUM_COMPUTED: args.get("num_computed_tokens")}
    key = args.get("key", args.get("token_ids"))
    return {KEY_TOKENS: len(key) if key is not None else None}


def insert_after(args: dict, result: Any) -> dict:
    prefix_len = getattr(result, "prefix_len", None)
    return {CACHED_TOKENS: prefix_len} if prefix_len is not None else {}


def evict_before(args: dict) -> dict:
    if "num_blocks" in args:  # BlockPool.get_new_blocks: the hash cache evicts the blocks it reuses
        return blocks_to_evict(args["self"], args["num_blocks"], bytes)
    stash_evict_candidates(args, args["self"])
    return {EVICT_REQUESTED: args.get("num_tokens")}


def evict_after(args: dict, num_evicted: Any) -> dict:
    cache = args["self"]
    if "num_blocks" in args:
        return {FREE_BLOCKS: cache.get_num_free_blocks()}
    return {EVICTED: num_evicted, EVICTABLE: cache.evictable_size(), PROTECTED: cache.protected_size(),
            **evicted_nodes(args, cache)}


def preempt_before(args: dict) -> dict:
    return request_attributes(args["request"])


def preempt_after(args: dict, _: Any) -> dict:
    request = args["request"]
    return {NUM_PREEMPTIONS: request.num_preemptions, STATUS: request.status.name, **_kv(args["self"].kv_cache_manager)}


def execute_before(args: dict) -> dict:
    if "model_input" in args:  # ModelRunner.execute_model_input (async scheduling's model thread)
        model_input = args["model_input"]
        if model_input is None:
            return {DROP: True}  # an empty step: nothing ran
        # ModelInput, or a StepPlan (async "ngram_gpu" speculation: tokens as scheduled, before trimming).
        return {STEP: model_input.step, MODEL_TOKENS: model_input.num_tokens, BATCH_SIZE: len(model_input.req_ids)}
    so = args["scheduler_output"]
    return {STEP: so.step, MODEL_TOKENS: so.total_num_scheduled_tokens, BATCH_SIZE: len(so.num_scheduled_tokens)}


def execute_after(args: dict, output: Any) -> dict:
    return {NUM_SAMPLED: sum(1 for tokens in output.sampled_token_ids if tokens)}


def forward_before(args: dict) -> dict:
    return {MODEL_TOKENS: int(args["input_ids"].shape[0])}


def sample_before(args: dict) -> dict:
    return {BATCH_SIZE: int(args["logits"].shape[0])}


def update_before(args: dict) -> dict:
    so = args["scheduler_output"]
    return {STEP: so.step, BATCH_SIZE: len(so.num_scheduled_tokens)}


def update_after(args: dict, outputs: list) -> dict:
    finished = [o for o in outputs if o.finished]
    return {
        NUM_OUTPUTS: len(outputs),
        BATCH_FINISHED: ids(o.request_id for o in finished),
        FINISH_REASONS: [o.finish_reason for o in finished],
        **queue_attributes(args["self"]),
    }


def free_before(args: dict) -> dict:
    if "request" not in args:
        return {KEY_TOKENS: len(args.get("token_ids") or [])}
    request, manager = args["request"], args["self"]
    out = {
        REQUEST_ID: request.request_id,
        STATUS: request.status.name,
        BLOCKS_FREED: len(manager.req_to_blocks.get(request.request_id) or []),
    }
    if request.is_finished:
        out[OUTPUT_TOKENS] = request.num_output_tokens
        out[FINISH_REASONS] = [request.get_finish_reason()]
        so_request = getattr(request, "structured_output_request", None)
        if so_request is not None:
            out[GRAMMAR_KIND] = so_request.kind
            out[GRAMMAR_COMPLETE] = so_request.is_complete
    return out


def free_after(args: dict, _: Any) -> dict:
    return _kv(args["self"]) if "request" in args else {}


def detokenize_before(args: dict) -> dict:
    outputs = args["engine_core_outputs"]
    if not outputs:
        return {DROP: True}  # a step that only prefilled a chunk has nothing to detokenize
    return {
        BATCH_IDS: [o.request_id for o in outputs],
        BATCH_SIZE: len(outputs),
        BATCH_NEW_TOKENS: [len(o.new_token_ids) for o in outputs],
        NEW_TOKENS: sum(len(o.new_token_ids) for o in outputs),
    }


def detokenize_after(args: dict, result: Any) -> dict:
    finished = [o for o in result.request_outputs if o.finished]
    return {
        BATCH_FINISHED: [o.request_id for o in finished],
        FINISH_REASONS: [o.finish_reason for o in finished],
        STOPPED_BY_STRING: result.reqs_to_abort,
        TEXT_CHARS: sum(len(o.delta_text) for o in result.request_outputs),
    }


BEFORE = {
    **mini_decoding.BEFORE,
    "http.request": http_before,
    "engine.enqueue": enqueue_before,
    "engine.step": step_before,
    "kv.match_prefix": match_before,
    "kv.allocate": allocate_before_any,
    "scheduler.schedule": mini_sglang.schedule_before,
    "kv.insert": insert_before,
    "kv.evict": evict_before,
    "scheduler.preempt": preempt_before,
    "model.execute": execute_before,
    "model.forward": forward_before,
    "sampler.sample": sample_before,
    "scheduler.update": update_before,
    "kv.free": free_before,
    "detokenize": detokenize_before,
}
AFTER = {
    **mini_decoding.AFTER,
    "overlap.placeholders": placeholder_attributes,
    "http.request": http_after,
    "request.render": render_after,
    "engine.enqueue": enqueue_after,
    "engine.step": step_after,
    "scheduler.schedule": schedule_after,
    "kv.match_prefix": match_after,
    "kv.allocate": allocate_after,
    "kv.insert": insert_after,
    "kv.evict": evict_after,
    "scheduler.preempt": preempt_after,
    "model.execute": execute_after,
    "scheduler.update": update_after,
    "kv.free": free_after,
    "detokenize": detokenize_after,
}
# Asked before AFTER: a call they call uneventful ends with no span and no after-extractor.
DROP_IF = {"kv.allocate": allocate_uneventful}
SKIP_IF = {"kv.allocate": allocate_takes_no_block}
