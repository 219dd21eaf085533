"""The trace schema: every span attribute key servetrace writes or reads, with its type and meaning.

Span names are the catalog's hop names (tracer/catalog/hops.yaml); this module is the other half:
what the attributes on those spans mean. Writers (the extractors, tracer.instrument.spans) and
readers (the explorer, the site, Perfetto export) import the keys from here and nowhere else.
OpenTelemetry GenAI names are used where one fits; DEPRECATED maps the older names that vLLM's own
tracing still emits (vllm/tracing/utils.py:SpanAttributes) to ours, so a reader can fold them in.
"""
from __future__ import annotations

from dataclasses import dataclass

# Version 2: hop roles in the catalog, internal + external ids on upstream spans, a server.startup
# trace. Version 1 (no servetrace.schema.version on the resource) has the same keys and still opens.
SCHEMA_VERSION = 2
SCHEMA_VERSION_KEY = "servetrace.schema.version"  # resource attribute


@dataclass(frozen=True)
class Key:
    name: str
    type: str  # "str" | "int" | "float" | "bool" | "str[]" | "int[]"
    meaning: str


KEYS: dict[str, Key] = {}


def _key(name: str, type_: str, meaning: str) -> str:
    KEYS[name] = Key(name, type_, meaning)
    return name


# -- resource (one per process) --------------------------------------------------------------------
SERVICE_NAME = _key("service.name", "str", "the process's service (servetrace-mini, servetrace-vllm ...)")
PROCESS_PID = _key("process.pid", "int", "the process that emitted the span")
ENGINE = _key("servetrace.engine", "str", "which catalog engine emitted the span (mini, vllm, sglang)")
ENGINE_VERSION = _key("servetrace.engine.version", "str", "the installed version of that engine")
# A span attribute, not a resource one: a process's engine may run in a mode (catalog engines' `modes`).
ENGINE_MODE = _key("servetrace.engine.mode", "str", "the catalog engine mode the span's target runs in (ours: sglang, for cache_mode sglang)")
PROCESS_ROLE = _key("servetrace.process.role", "str", "api_server, engine_core, worker, scheduler, detokenizer ...")
# What the spans' times measure: "wall" (a serving run; also when absent), "steps" (a replay: the
# order of the scheduler's steps, timed by the replay's own CPU work), "predicted" (whatif: steps
# timed by a step-time model fitted on a trace).
CLOCK = _key("servetrace.clock", "str", "what the trace's times measure: wall (absent), steps (a replay) or predicted (whatif)")
CLOCKS = ("wall", "steps", "predicted")

# -- GenAI semantic conventions --------------------------------------------------------------------
REQUEST_ID = _key("gen_ai.request.id", "str", "the request's id in the process that emitted the span")
MAX_TOKENS = _key("gen_ai.request.max_tokens", "int", "max_tokens of the request")
TEMPERATURE = _key("gen_ai.request.temperature", "float", "sampling temperature")
TOP_P = _key("gen_ai.request.top_p", "float", "nucleus sampling threshold")
TOP_K = _key("gen_ai.request.top_k", "int", "top-k sampling")
REQUEST_MODEL = _key("gen_ai.request.model", "str", "the model the client asked for")
INPUT_TOKENS = _key("gen_ai.usage.input_tokens", "int", "prompt length in tokens")
OUTPUT_TOKENS = _key("gen_ai.usage.output_tokens", "int", "generated tokens")
FINISH_REASONS = _key("gen_ai.response.finish_reasons", "str[]", "why each finished request stopped")
OPERATION = _key("gen_ai.operation.name", "str", "chat or text_completion")

# -- HTTP --------------------------------------------------------------------------------------------
HTTP_STATUS = _key("http.response.status_code", "int", "the HTTP status the request ended with")
HTTP_METHOD = _key("http.request.method", "str", "GET / POST")
HTTP_ROUTE = _key("http.route", "str", "the route served")
HTTP_REQUEST_ID_HEADER = _key("http.request.header.x-request-id", "str", "the client's X-Request-Id, where the server's id differs")
HTTP_STREAM = _key("servetrace.http.stream", "bool", "a streamed (SSE) response")
STREAM_CLOSED_EARLY = _key("servetrace.stream.closed_early", "bool", "the client went away before the stream ended")

# -- one request ------------------------------------------------------------------------------------
EXTERNAL_ID = _key("servetrace.request.external_id", "str", "the id the client knows (vLLM's internal id adds a suffix)")
NUM_COMPUTED = _key("servetrace.request.num_computed_tokens", "int", "tokens whose KV is computed")
NUM_PREEMPTIONS = _key("servetrace.request.num_preemptions", "int", "times the request was preempted so far")
STATUS = _key("servetrace.request.status", "str", "the request's status in the scheduler")
PRIORITY = _key("servetrace.request.priority", "int", "priority (lower runs first under the priority policy)")

# -- KV cache ---------------------------------------------------------------------------------------
CACHED_TOKENS = _key("servetrace.kv.cached_tokens", "int", "prompt tokens found in the prefix cache")
CACHED_BLOCKS = _key("servetrace.kv.cached_blocks", "int", "blocks found in the prefix cache")
NUM_NEW_TOKENS = _key("servetrace.kv.num_new_tokens", "int", "tokens this allocation is for")
NUM_NEW_COMPUTED = _key("servetrace.kv.num_new_computed_tokens", "int", "newly matched cached tokens in this allocation")
ALLOCATED = _key("servetrace.kv.allocated", "bool", "the allocation succeeded")
BLOCKS_ALLOCATED = _key("servetrace.kv.blocks_allocated", "int", "new blocks handed out")
BLOCK_IDS = _key("servetrace.kv.block_ids", "int[]", "the block ids involved")
BLOCKS_FREED = _key("servetrace.kv.blocks_freed", "int", "blocks released")
FREE_BLOCKS = _key("servetrace.kv.free_blocks", "int", "free blocks in the pool after the call")
KV_USAGE = _key("servetrace.kv.usage", "float", "fraction of the pool in use after the call")
KEY_TOKENS = _key("servetrace.kv.key_tokens", "int", "tokens in the radix-cache key")
EVICT_REQUESTED = _key("servetrace.kv.evict_requested_tokens", "int", "tokens the caller asked to evict")
EVICTED = _key("servetrace.kv.evicted_tokens", "int", "tokens evicted")
EVICTABLE = _key("servetrace.kv.evictable_tokens", "int", "tokens evictable after the call")
PROTECTED = _key("servetrace.kv.protected_tokens", "int", "tokens locked by running requests")
EVICTED_HASHES = _key("servetrace.kv.evicted_block_hashes", "str[]", "hashes of the cached blocks this allocation evicted (reused for new tokens)")
CACHING_ENABLED = _key("servetrace.kv.caching_enabled", "bool", "prefix caching was on for this lookup")
HASH_DOMAIN = _key("servetrace.kv.hash_domain", "str", "what besides the tokens keys the request's cache entries: vLLM's block hashes (lora:NAME, salted:DIGEST of the cache salt), SGLang's radix namespace (extra-key / salted and a digest of extra_key and cache_salt); never the salt itself; absent: the tokens alone")
FIRST_BLOCK_TOKENS_HASH = _key("servetrace.kv.first_block_tokens_hash", "str", "a hash of the token ids of the prompt's first full block alone, without the hash domain (vLLM): two requests with the same first block in two hash domains share it, without content capture")
RADIX_NODE_ID = _key("servetrace.radix.last_node_id", "int", "the radix node a match ended at")
RADIX_PATH_IDS = _key("servetrace.radix.path_node_ids", "int[]", "the matched radix path, root's child first: node ids")
RADIX_PATH_TOKENS = _key("servetrace.radix.path_node_tokens", "int[]", "tokens per node of that path (they add up to the match)")
RADIX_PREFIX_HASHES = _key("servetrace.radix.prefix_hashes", "str[]", "chained hashes of the prompt's full hash units (RADIX_HASH_TOKENS each), of the tokens alone (the namespace is HASH_DOMAIN): which requests shared a prefix, without the tokens")
RADIX_HASH_TOKENS = _key("servetrace.radix.hash_tokens", "int", "tokens per prefix hash (a whole number of pages, at least 16)")
RADIX_NEXT_PAGE = _key("servetrace.radix.next_page_key", "str", "short hash of the lookup key's first page past the match (the child key the tree did not hold): joins a miss to the evicted node that continued it")
EVICTED_NODE_IDS = _key("servetrace.radix.evicted_node_ids", "int[]", "the radix nodes an eviction removed (at most 256 named)")
EVICTED_NODE_TOKENS = _key("servetrace.radix.evicted_node_tokens", "int[]", "tokens per evicted node")
EVICTED_NODE_PARENTS = _key("servetrace.radix.evicted_node_parents", "int[]", "each evicted node's parent node id (the path it hung from)")
EVICTED_NODE_STARTS = _key("servetrace.radix.evicted_node_starts", "int[]", "each evicted node's first token's position on its path (the prompt position it covered from)")
EVICTED_NODE_KEYS = _key("servetrace.radix.evicted_node_keys", "str[]", "short hash of each evicted node's first page (its child key, as RADIX_NEXT_PAGE)")
CHECKPOINT = _key("servetrace.kv.checkpoint", "bool", "SGLang's release_kv_cache(checkpoint=): insert into the tree first")
EXTEND_TOKENS = _key("servetrace.kv.extend_tokens", "int", "tokens a prefill batch extends by")
CHECKPOINT_UP_TO = _key("servetrace.kv.up_to", "int", "the token a radix checkpoint caches up to")
ADD_RESULT = _key("servetrace.scheduler.add_result", "str", "SGLang PrefillAdder's AddReqResult for the request")
ARRIVAL_STEP = _key("servetrace.request.arrival_step", "int", "engine steps this process had emitted when the request entered its scheduler")
PROMPT_TOKEN_IDS = _key("servetrace.request.prompt_token_ids", "int[]", "the prompt's token ids (upstream servers: only with content capture on)")
RETRACT_REMAINING = _key("servetrace.kv.retract_remaining_requests", "int", "SGLang: requests still running when this one was retracted")
BLOCK_HASHES = _key("servetrace.kv.block_hashes", "str[]", "hashes of the prompt's full blocks (what replay needs without the tokens)")

# -- one engine step / batch -------------------------------------------------------------------------
STEP = _key("servetrace.step", "int", "the engine's step counter")
BATCH_PREFIX = "servetrace.batch."  # every servetrace.batch.* key is copied from the schedule span to its step
BATCH_IDS = _key("servetrace.batch.request_ids", "str[]", "the requests in the batch (the step links to each)")
BATCH_EXTERNAL_IDS = _key("servetrace.batch.external_ids", "str[]", "their external ids, in the same order")
BATCH_TOKENS = _key("servetrace.batch.num_scheduled_tokens", "int[]", "tokens scheduled per request, in BATCH_IDS order")
BATCH_TOTAL = _key("servetrace.batch.total_tokens", "int", "tokens scheduled in the step")
BATCH_SIZE = _key("servetrace.batch.size", "int", "requests in the batch")
BATCH_PREFILL = _key("servetrace.batch.num_prefill", "int", "requests still in their prompt")
BATCH_DECODE = _key("servetrace.batch.num_decode", "int", "requests decoding")
BATCH_NEW = _key("servetrace.batch.num_new", "int", "requests scheduled for the first time")
BATCH_RESUMED = _key("servetrace.batch.resumed_request_ids", "str[]", "requests resumed after a preemption in this step (vLLM: scheduled_cached_reqs.resumed_req_ids)")
BATCH_PREEMPTED = _key("servetrace.batch.preempted_request_ids", "str[]", "requests preempted in this step")
BATCH_FINISHED = _key("servetrace.batch.finished_request_ids", "str[]", "requests that finished in this step")
BATCH_FINISHED_SINCE = _key("servetrace.batch.finished_since_last", "str[]", "requests finished since the previous schedule")
BATCH_NEW_TOKENS = _key("servetrace.batch.num_new_tokens", "int[]", "new output tokens per request, in BATCH_IDS order")
FORWARD_MODE = _key("servetrace.batch.forward_mode", "str", "SGLang's ForwardMode of the batch")
# The scheduler's state at the end of schedule(): why the waiting queue's head was not admitted
# (servetrace explain reads it; vLLM decides budget and max_num_seqs inline, with no call to hook).
WAITING_HEAD = _key("servetrace.queue.waiting_head", "str", "the request at the head of the waiting queue after the step's schedule")
WAITING_HEAD_STATUS = _key("servetrace.queue.waiting_head_status", "str", "its status (WAITING, or what it waits for: a grammar, remote KV ...)")
WAITING_HEAD_BLOCKS = _key("servetrace.queue.waiting_head_blocks_needed", "int", "new KV blocks its prompt (less its prefix hit so far) needs")
SCHED_TOKEN_BUDGET = _key("servetrace.scheduler.token_budget", "int", "the step's token budget (max_num_batched_tokens)")
SCHED_MAX_SEQS = _key("servetrace.scheduler.max_num_seqs", "int", "most requests running at once")
SCHED_CHUNKED = _key("servetrace.scheduler.chunked_prefill", "bool", "chunked prefill on (off: a prompt must fit the budget left)")
# SGLang's scheduler state at the end of get_next_batch_to_run: its PrefillAdder's budgets after the
# last add_one_req of the pass (sglang/srt/managers/schedule_policy.py:607), and why the queue's head was not admitted.
SCHED_REM_INPUT = _key("servetrace.scheduler.rem_input_tokens", "int", "SGLang: prefill tokens left in the pass (PrefillAdder.rem_input_tokens, from max_prefill_tokens)")
SCHED_REM_CHUNK = _key("servetrace.scheduler.rem_chunk_tokens", "int", "SGLang: chunk tokens left (PrefillAdder.rem_chunk_tokens; absent: chunked prefill off)")
SCHED_REM_TOTAL = _key("servetrace.scheduler.rem_total_tokens", "int", "SGLang: KV tokens left for admission, reserved decodes counted (PrefillAdder.rem_total_tokens)")
SCHED_NEW_TOKEN_RATIO = _key("servetrace.scheduler.new_token_ratio", "float", "SGLang: the share of max_new_tokens reserved per running request")
SCHED_BATCH_FULL = _key("servetrace.scheduler.batch_is_full", "bool", "SGLang: running_batch.batch_is_full after the pass (admission shut until a request leaves)")
WAITING_HEAD_RESULT = _key("servetrace.queue.waiting_head_add_result", "str", "SGLang: why the head was not admitted: its AddReqResult (NO_TOKEN, OTHER), or BATCH_FULL / NOT_TRIED when add_one_req never saw it")
WAITING_HEAD_TOKENS = _key("servetrace.queue.waiting_head_tokens", "int", "SGLang: the head's prompt tokens less its prefix hit (what it asked add_one_req for)")
NUM_RUNNING = _key("servetrace.queue.num_running", "int", "running requests")
NUM_WAITING = _key("servetrace.queue.num_waiting", "int", "waiting requests")
NUM_OUTPUTS = _key("servetrace.step.num_outputs", "int", "outputs the step produced")
MODEL_EXECUTED = _key("servetrace.step.model_executed", "bool", "the step ran the model")
BATCH_QUEUE_LEN = _key("servetrace.step.batch_queue_len", "int", "batches in flight (async scheduling)")
OVERLAPS_STEP = _key("servetrace.step.overlaps_step", "int", "async scheduling: the step whose model execution was running when this schedule began (the schedule links to it)")
# Async scheduling's placeholders (the overlap.placeholders hop) and the wait on a step in flight (overlap.wait).
PLACEHOLDERS_ADDED = _key("servetrace.overlap.placeholders_added", "int", "output placeholders this schedule added: one per scheduled request that samples (not a prefill chunk short of its prompt), plus its drafts")
PLACEHOLDERS_OUTSTANDING = _key("servetrace.overlap.num_output_placeholders", "int", "placeholders outstanding over the step's requests after it was scheduled: tokens scheduled, not yet sampled (2 for a request whose previous step is still in flight)")
PLACEHOLDER_REQUESTS_IN_FLIGHT = _key("servetrace.overlap.num_requests_in_flight", "int", "requests of the step scheduled while their previous step's token was still a placeholder")
PENDING_STRUCTURED = _key("servetrace.overlap.pending_structured_output_tokens", "bool", "vLLM: a structured request of the step waits on a placeholder, so its sampling is deferred until the step before is applied")
WAITED_STEP = _key("servetrace.overlap.waited_step", "int", "the step whose output the engine waited on (and, in ours, applied)")
FROM_FUTURE = _key("servetrace.overlap.inputs_from_future", "bool", "SGLang: the batch's input ids were gathered from the FutureMap (the previous batch's sampled tokens), not copied from a prefill's staging")
NUM_SAMPLED = _key("servetrace.sampler.num_sampled", "int", "tokens sampled")
MODEL_TOKENS = _key("servetrace.model.num_tokens", "int", "tokens in the forward pass")
GPU_FORWARD_MS = _key("servetrace.gpu.forward_ms", "float", "GPU time of the forward pass from CUDA events")
NEW_TOKENS = _key("servetrace.detokenize.num_new_tokens", "int", "tokens detokenized in the call")
TEXT_CHARS = _key("servetrace.detokenize.text_chars", "int", "characters of text produced")
STOPPED_BY_STRING = _key("servetrace.detokenize.stopped_request_ids", "str[]", "requests stopped by a stop string")

# Speculative decoding (spec.propose / spec.verify): counts over the step's batch.
SPEC_NUM_DRAFT = _key("servetrace.spec.num_draft_tokens", "int", "draft tokens proposed (spec.propose) or verified (spec.verify) in the step")
SPEC_NUM_ACCEPTED = _key("servetrace.spec.num_accepted_tokens", "int", "drafts the target model accepted (the bonus or recovered token not counted)")
SPEC_NUM_REJECTED = _key("servetrace.spec.num_rejected_tokens", "int", "drafts rejected: their KV slots are overwritten, num_computed_tokens rolls back by this much")
SPEC_NUM_REQUESTS = _key("servetrace.spec.num_requests", "int", "requests with at least one draft")

# -- structured output (grammar.* hops) ---------------------------------------------------------------
GRAMMAR_KIND = _key("servetrace.grammar.kind", "str", "the request's constraint: json, json_object, regex, choice, grammar")
GRAMMAR_COMPILE_MS = _key("servetrace.grammar.compile_ms", "float", "time to the compiled grammar on the compile thread (a cache hit: the lookup, or the wait on a twin's compile)")
GRAMMAR_CACHE_HIT = _key("servetrace.grammar.cache_hit", "bool", "the compiled grammar came from the compile cache (same kind and spec)")
GRAMMAR_NUM_ROWS = _key("servetrace.grammar.num_rows", "int", "bitmask rows filled or applied in the step (one per structured request, more with drafts)")
GRAMMAR_MASKED_FRACTION = _key("servetrace.grammar.masked_fraction", "float", "mean fraction of the vocabulary the step's bitmask rows forbid")
GRAMMAR_COMPLETE = _key("servetrace.grammar.complete", "bool", "on a finished constrained request: its output is a whole sentence of the grammar (false: max_tokens cut it off)")
GRAMMAR_JUMP_TOKENS = _key("servetrace.grammar.jump_forward_tokens", "int", "tokens jump-forward appended without a forward pass each")

# A batch span links to each request of the batch (LINK_REQUEST) and, with LINK_REPORTED, to those
# whose finish or preemption the step reports without running them (such a step still belongs to them).
REPORTED_ID_KEYS = (BATCH_FINISHED_SINCE, BATCH_PREEMPTED)

# -- the server's configuration (on server.startup: what a replay of the trace needs) -----------------
CONFIG_MAX_NUM_SEQS = _key("servetrace.config.max_num_seqs", "int", "scheduler: most requests in a batch")
CONFIG_MAX_BATCHED_TOKENS = _key("servetrace.config.max_num_batched_tokens", "int", "scheduler: token budget per step")
CONFIG_MAX_MODEL_LEN = _key("servetrace.config.max_model_len", "int", "longest sequence")
CONFIG_CHUNKED_PREFILL = _key("servetrace.config.enable_chunked_prefill", "bool", "scheduler: chunked prefill on")
CONFIG_LONG_PREFILL = _key("servetrace.config.long_prefill_token_threshold", "int", "scheduler: chunk cap for long prompts")
CONFIG_POLICY = _key("servetrace.config.policy", "str", "scheduler: fcfs / priority / lpm ...")
CONFIG_ASYNC = _key("servetrace.config.async_scheduling", "bool", "scheduler: one step ahead of the model")
CONFIG_SERIAL_STEP = _key("servetrace.config.serial_step_max_tokens", "int",
                          "CPU steps of at most this many tokens compute on one thread (0: none; ours)")
CONFIG_BLOCK_SIZE = _key("servetrace.config.block_size", "int", "KV cache: tokens per block (page)")
CONFIG_PREFIX_CACHING = _key("servetrace.config.enable_prefix_caching", "bool", "KV cache: prefix caching on")
CONFIG_NUM_BLOCKS = _key("servetrace.config.num_kv_blocks", "int", "KV cache: blocks in the pool")
CONFIG_MAX_TOTAL_TOKENS = _key("servetrace.config.max_total_tokens", "int", "KV cache: token slots in the pool (SGLang)")

EXTRACTOR_ERROR = _key("servetrace.extractor.error", "str", "an extractor of this span raised: phase, type and message (the call went on)")

# -- links -------------------------------------------------------------------------------------------
LINK_KIND = _key("servetrace.link", "str", "on a link: 'request' (a request in the batch), 'reported' (a request the step reports finished or preempted), 'waiting' (the waiting head a step that scheduled nobody names), 'step' (the running step) or 'overlap' (async scheduling: the model execution still running when a schedule began)")
LINK_REQUEST = "request"
LINK_REPORTED = "reported"
# A step that scheduled nobody but names the waiting head it decided about (a request waiting for its
# grammar alone: the loop steps anyway) links to that head, so its trace is rooted (issue #13's rule).
LINK_WAITING = "waiting"
LINK_STEP = "step"
LINK_OVERLAP = "overlap"

# Older names upstream engines still emit, and ours for the same thing.
DEPRECATED: dict[str, str] = {
    "gen_ai.usage.prompt_tokens": INPUT_TOKENS,
    "gen_ai.usage.completion_tokens": OUTPUT_TOKENS,
}

# The header / field under which the hooks carry a trace context across a process boundary (vLLM's
# EngineCoreRequest.trace_headers, a SchedulerOutput attribute ...). Our own key, so an engine's own
# tracing (which reads "traceparent") is left as it was.
CARRIER_KEY = "servetrace-traceparent"
CARRIER_EXTERNAL_ID = "servetrace-external-id"  # the client-facing id, for a process that only sees the internal one

# Extractor control keys: returned by an extractor to steer the span, never written on it.
TRACEPARENT = "_traceparent"  # a W3C traceparent to parent the span on
ALIASES = "_aliases"  # more ids naming the same request (vLLM's internal id beside the external one)
DROP = "_drop"  # after-extractor: this call was uneventful, emit no span (unless a child needed it)


# The request id under the engines' own tracing, where it is not gen_ai.request.id (vLLM's llm_request
# span uses gen_ai.request.id, the external id): SGLang's spans (sglang/srt/observability/trace.py,
# its "Req ..." root span) carry "rid". The explorer joins such spans to the request by this id.
NATIVE_REQUEST_ID_KEYS = ("rid",)


def canonical(key: str) -> str:
    """Our name for an attribute key (a deprecated upstream name folded into ours)."""
    return DEPRECATED.get(key, key)
