"""Attribute extractors, one module per engine: BEFORE[hop](args) and AFTER[hop](args, result)
return span attributes. `args` maps the target's parameter names to the call's arguments.

Shared attribute keys (OpenTelemetry GenAI semantic conventions where one fits):
  gen_ai.request.id, gen_ai.request.max_tokens, gen_ai.request.temperature, gen_ai.request.top_p,
  gen_ai.request.top_k, gen_ai.usage.input_tokens, gen_ai.usage.output_tokens,
  gen_ai.response.finish_reasons; servetrace.* for engine internals (see tracer/instrument/spans.py for
  the keys that steer the trace shape: gen_ai.request.id and servetrace.batch.request_ids).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

# GenAI semantic conventions
REQUEST_ID = "gen_ai.request.id"
MAX_TOKENS = "gen_ai.request.max_tokens"
TEMPERATURE = "gen_ai.request.temperature"
TOP_P = "gen_ai.request.top_p"
TOP_K = "gen_ai.request.top_k"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
OPERATION = "gen_ai.operation.name"

# servetrace: one request
EXTERNAL_ID = "servetrace.request.external_id"
NUM_COMPUTED = "servetrace.request.num_computed_tokens"
NUM_PREEMPTIONS = "servetrace.request.num_preemptions"
STATUS = "servetrace.request.status"
PRIORITY = "servetrace.request.priority"
# servetrace: KV cache
CACHED_TOKENS = "servetrace.kv.cached_tokens"
CACHED_BLOCKS = "servetrace.kv.cached_blocks"
NUM_NEW_TOKENS = "servetrace.kv.num_new_tokens"
NUM_NEW_COMPUTED = "servetrace.kv.num_new_computed_tokens"
ALLOCATED = "servetrace.kv.allocated"
BLOCKS_ALLOCATED = "servetrace.kv.blocks_allocated"
BLOCK_IDS = "servetrace.kv.block_ids"
BLOCKS_FREED = "servetrace.kv.blocks_freed"
FREE_BLOCKS = "servetrace.kv.free_blocks"
KV_USAGE = "servetrace.kv.usage"
KEY_TOKENS = "servetrace.kv.key_tokens"
EVICT_REQUESTED = "servetrace.kv.evict_requested_tokens"
EVICTED = "servetrace.kv.evicted_tokens"
EVICTABLE = "servetrace.kv.evictable_tokens"
PROTECTED = "servetrace.kv.protected_tokens"
# servetrace: one engine step / batch
STEP = "servetrace.step"
BATCH_IDS = "servetrace.batch.request_ids"
BATCH_TOKENS = "servetrace.batch.num_scheduled_tokens"
BATCH_TOTAL = "servetrace.batch.total_tokens"
BATCH_SIZE = "servetrace.batch.size"
BATCH_PREFILL = "servetrace.batch.num_prefill"
BATCH_DECODE = "servetrace.batch.num_decode"
BATCH_NEW = "servetrace.batch.num_new"
BATCH_PREEMPTED = "servetrace.batch.preempted_request_ids"
BATCH_FINISHED = "servetrace.batch.finished_request_ids"
FORWARD_MODE = "servetrace.batch.forward_mode"
NUM_RUNNING = "servetrace.queue.num_running"
NUM_WAITING = "servetrace.queue.num_waiting"
NUM_OUTPUTS = "servetrace.step.num_outputs"
NUM_SAMPLED = "servetrace.sampler.num_sampled"
MODEL_TOKENS = "servetrace.model.num_tokens"
NEW_TOKENS = "servetrace.detokenize.num_new_tokens"
TEXT_CHARS = "servetrace.detokenize.text_chars"
STOPPED_BY_STRING = "servetrace.detokenize.stopped_request_ids"
BATCH_NEW_TOKENS = "servetrace.batch.num_new_tokens"  # per request in servetrace.batch.request_ids

Extractor = Callable[..., dict[str, Any]]


def extractors_for(engine: str, hop: str) -> tuple[Extractor | None, Extractor | None]:
    module = importlib.import_module(f"tracer.instrument.extractors.{engine}")
    return module.BEFORE.get(hop), module.AFTER.get(hop)


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
