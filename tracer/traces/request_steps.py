"""A trace read as the engine saw it: its steps in order, and each request's life across them.

What `servetrace explain` builds on. Everything here is read off the raw spans (tracer.traces.shape
groups them into requests and step traces); the catalog's roles say which hop carries the batch,
opens a step, enqueues, renders, looks a prefix up, evicts or preempts: no hop name is written here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from tracer.catalog.hops import Catalog, load_catalog
from tracer.traces.schema import (
    BATCH_IDS, BATCH_PREEMPTED, BATCH_TOKENS, BATCH_TOTAL, BLOCK_HASHES, CACHED_BLOCKS, CACHED_TOKENS,
    CACHING_ENABLED, CONFIG_BLOCK_SIZE, ENGINE, ENGINE_MODE, EVICTED_HASHES, EXTERNAL_ID, REQUEST_ID, FREE_BLOCKS, FIRST_BLOCK_TOKENS_HASH, HASH_DOMAIN, INPUT_TOKENS, NUM_RUNNING,
    PRIORITY, PROMPT_TOKEN_IDS, SCHED_CHUNKED, SCHED_MAX_SEQS, SCHED_TOKEN_BUDGET, WAITING_HEAD,
    WAITING_HEAD_BLOCKS, WAITING_HEAD_STATUS, EVICTED, EVICTED_NODE_IDS, EVICTED_NODE_KEYS, EVICTED_NODE_PARENTS,
    EVICTED_NODE_STARTS, EVICTED_NODE_TOKENS, RADIX_PREFIX_HASHES, SCHED_NEW_TOKEN_RATIO, WAITING_HEAD_RESULT,
)
from tracer.traces.sglang_causes import sglang_waiting_cause
from tracer.traces.shape import RequestTrace, TraceShape, analyse
from tracer.traces.trace_file import SpanRecord

# Engines whose traces lack what explain reads: the CLI and the explorer's "why" view say so, in
# NOT_EXPLAINED's words, instead of explaining them. (SGLang is explained since its extractor records
# the PrefillAdder's state and the radix prefix hashes; the set stays for an engine added later.)
UNEXPLAINED_ENGINES: frozenset[str] = frozenset()
NOT_EXPLAINED = "explain reads the prefix-cache lookups and the scheduler state per step, which this engine's extractor does not record"


def unexplained_engines(spans: Iterable[SpanRecord]) -> set[str]:
    """The engines the spans' resources name (servetrace.engine) when explain covers none of them,
    else an empty set. Each resource is looked at once: a process's spans share one."""
    engines = trace_engines(spans)
    return engines if engines and engines <= UNEXPLAINED_ENGINES else set()


def trace_engines(spans: Iterable[SpanRecord]) -> set[str]:
    engines: set[str] = set()
    seen: set[int] = set()
    for span in spans:
        resource = span.resource or {}
        if id(resource) not in seen:
            seen.add(id(resource))
            if resource.get(ENGINE) is not None:
                engines.add(str(resource[ENGINE]))
    return engines


@dataclass
class Step:
    """One engine step: its span interval and what its schedule span recorded at the end of schedule()."""

    index: int
    start_ns: int
    end_ns: int
    schedule: SpanRecord

    def attr(self, key: str, default: Any = None) -> Any:
        return self.schedule.attributes.get(key, default)

    @property
    def batch(self) -> dict[str, int]:
        ids, tokens = self.attr(BATCH_IDS) or [], self.attr(BATCH_TOKENS) or []
        return {str(rid): int(n) for rid, n in zip(ids, tokens)}

    @property
    def budget_left(self) -> int | None:
        budget = self.attr(SCHED_TOKEN_BUDGET)
        return None if budget is None else int(budget) - int(self.attr(BATCH_TOTAL) or 0)

    def waiting_cause(self) -> tuple[str, str]:
        """Why the waiting queue's head was not admitted in this step: (code, evidence), in the order
        vLLM's Scheduler.schedule tests it (vllm/v1/core/sched/scheduler.py, 0.33.0): a step that
        preempted admits nothing (line 1050), the loop runs while token_budget > 0 (1062), stops at
        max_num_active_reqs (1073), without chunked prefill stops at a prompt over the budget left
        (1339), and stops when allocate_slots finds no blocks (1459)."""
        if self.attr(WAITING_HEAD_RESULT) is not None or self.attr(SCHED_NEW_TOKEN_RATIO) is not None:
            return sglang_waiting_cause(self)  # SGLang's PrefillAdder, not V1's loop
        if self.attr(SCHED_TOKEN_BUDGET) is None:
            return "unrecorded", "this step's schedule span has no scheduler state (a trace from before schema 2 or an engine that does not record it)"
        head, status = self.attr(WAITING_HEAD), str(self.attr(WAITING_HEAD_STATUS) or "WAITING")
        if self.attr(BATCH_PREEMPTED):
            return "preemption", f"the step preempted {', '.join(self.attr(BATCH_PREEMPTED))}: no waiting request is admitted in such a step"
        if status not in ("WAITING", "PREEMPTED"):
            code = "grammar-compile" if "GRAMMAR" in status or "STRUCTURED" in status or "FSM" in status else "blocked"
            return code, f"the queue's head {head} is {status}"
        budget_left = self.budget_left
        if budget_left is not None and budget_left <= 0:
            users = ", ".join(f"{rid}:{n}" for rid, n in self.batch.items())
            return "token-budget", f"the {self.attr(SCHED_TOKEN_BUDGET)}-token budget went to {users}"
        if self.attr(NUM_RUNNING) is not None and int(self.attr(NUM_RUNNING)) >= int(self.attr(SCHED_MAX_SEQS)):
            return "max-num-seqs", f"{self.attr(NUM_RUNNING)} requests running, max_num_seqs {self.attr(SCHED_MAX_SEQS)}"
        if self.attr(SCHED_CHUNKED) is False:
            return "token-budget", f"chunked prefill is off and the head {head} does not fit the {budget_left} tokens left"
        return "kv-blocks", (f"the head {head} needs about {self.attr(WAITING_HEAD_BLOCKS)} blocks for its prompt, "
                             f"{self.attr(FREE_BLOCKS)} free (allocate_slots found too few)")


@dataclass
class Eviction:
    time_ns: int
    hashes: list[str]
    by_request: str | None  # the request whose allocation took the blocks
    tokens: int = 0  # SGLang's radix evictions name a token count, not hashes
    nodes: list[dict] = field(default_factory=list)  # radix nodes removed: id, tokens, parent, start, key


@dataclass
class RequestLife:
    """One request across the engine's steps."""

    request: RequestTrace
    name: str  # the id a user knows it by (external where there is one)
    ids: set[str]
    start_ns: int
    end_ns: int
    arrival_ns: int  # when the engine's scheduler got it (the last enqueue span's end)
    prompt_tokens: int
    block_hashes: list[str]
    prompt_token_ids: list[int] | None
    hash_domain: str | None
    priority: int | None
    matches: list[SpanRecord]  # kv.match_prefix, in time order (a resumed request looks up again)
    preemptions: list[SpanRecord]
    inserts: list[SpanRecord] = field(default_factory=list)  # its tokens entering a radix tree (kv.insert)
    scheduled: list[tuple[Step, int]] = field(default_factory=list)  # (step, tokens) in step order
    first_block_tokens_hash: str | None = None  # the first block's tokens alone, hashed (vLLM; no domain in it)

    def my_tokens(self, step: Step) -> int | None:
        batch = step.batch
        for rid in self.ids:
            if rid in batch:
                return batch[rid]
        return None

    def match_for(self, step: Step | None) -> SpanRecord | None:
        """The lookup that admitted it in `step`: the last one before that step's schedule ended (a
        request refused for blocks is looked up again each step; SGLang's lpm policy looks up every
        waiting request each pass). Without a step, the first lookup."""
        if not self.matches:
            return None
        if step is None:
            return self.matches[0]
        before = [m for m in self.matches if m.start_ns <= step.schedule.end_ns]
        return before[-1] if before else self.matches[0]

    @property
    def admission_match(self) -> SpanRecord | None:
        return self.match_for(self.scheduled[0][0] if self.scheduled else None)

    @property
    def cached_tokens(self) -> int:
        match = self.admission_match
        return int(match.attributes.get(CACHED_TOKENS) or 0) if match is not None else 0

    @property
    def cached_blocks(self) -> int:
        match = self.admission_match
        return int(match.attributes.get(CACHED_BLOCKS) or 0) if match is not None else 0

    @property
    def caching_enabled(self) -> bool | None:
        match = self.admission_match
        return match.attributes.get(CACHING_ENABLED) if match is not None else None

    @property
    def prefix_hashes(self) -> list[str]:
        return list(_first(self.request.spans, RADIX_PREFIX_HASHES) or [])


@dataclass
class EngineTimeline:
    steps: list[Step]
    requests: list[RequestLife]  # in arrival order
    evictions: list[Eviction]
    block_size: int | None
    has_startup: bool  # the trace holds the server's startup: nothing ran before it began
    shape: TraceShape
    engine: str | None = None  # servetrace.engine of the trace's processes (mini, vllm, sglang)
    mode: str = ""  # the engine mode its spans name (servetrace.engine.mode: ours in cache_mode sglang)
    label: str = ""  # what the catalog calls a trace of this engine in this mode (mini-sglang)
    mirrors: str = ""  # the catalog engine whose mechanisms explain it (sglang for mini-sglang)

    def find(self, request_id: str) -> RequestLife | None:
        for life in self.requests:
            if request_id in life.ids or request_id == life.name:
                return life
        return None


def _first(spans: list[SpanRecord], key: str) -> Any:
    for span in spans:
        if span.attributes.get(key) is not None:
            return span.attributes[key]
    return None


def read_timeline(spans: list[SpanRecord], catalog: Catalog | None = None) -> EngineTimeline:
    catalog = catalog or load_catalog()
    shape = analyse(spans, catalog)
    batch_hops, enqueue_hops = set(catalog.with_role("batch")), set(catalog.with_role("enqueue"))
    render_hops = set(catalog.with_role("render")) | set(catalog.with_role("entrypoint"))
    lookup_hops, evict_hops, preempt_hops, insert_hops = (set(catalog.with_role(r)) for r in ("prefix_lookup", "evict", "preempt", "insert"))
    schedules = []
    for members in [*shape.step_traces.values(), *_idle_steps(shape, catalog)]:
        root = min(members, key=lambda s: s.start_ns)
        for span in members:
            if span.name in batch_hops and span.attributes.get(BATCH_IDS) is not None:
                schedules.append((min(root.start_ns, span.start_ns), max(root.end_ns, span.end_ns), span))
    schedules.sort(key=lambda item: item[0])
    steps = [Step(i, start, end, span) for i, (start, end, span) in enumerate(schedules)]

    span_request: dict[str, str] = {}
    lives = []
    for request in shape.requests:
        members = sorted(request.spans, key=lambda s: s.start_ns)
        enqueues = [s for s in members if s.name in enqueue_hops]
        engine_side = [s for s in members if s.name not in render_hops]
        arrival = max((s.end_ns for s in enqueues), default=request.root.start_ns)
        ids = request.ids
        name = _external_name(request, members)
        life = RequestLife(
            request=request, name=name, ids=ids,
            start_ns=min(s.start_ns for s in members), end_ns=max(s.end_ns for s in members),
            arrival_ns=arrival,
            prompt_tokens=int(_first(enqueues or engine_side, INPUT_TOKENS) or 0),
            block_hashes=list(_first(members, BLOCK_HASHES) or []),
            prompt_token_ids=_first(members, PROMPT_TOKEN_IDS),
            hash_domain=_first(members, HASH_DOMAIN),
            priority=_first(enqueues, PRIORITY),
            matches=[s for s in members if s.name in lookup_hops],
            preemptions=[s for s in members if s.name in preempt_hops],
            inserts=[s for s in members if s.name in insert_hops],
            first_block_tokens_hash=_first(members, FIRST_BLOCK_TOKENS_HASH),
        )
        for span in members:
            span_request[span.span_id] = life.name
        lives.append(life)
    by_id = {rid: life for life in lives for rid in life.ids}
    for step in steps:
        for rid, tokens in step.batch.items():
            life = by_id.get(rid)
            if life is not None:
                life.scheduled.append((step, tokens))
                life.end_ns = max(life.end_ns, step.end_ns)
    evictions = []
    for span in spans:
        if span.name in evict_hops and (span.attributes.get(EVICTED_HASHES) or span.attributes.get(EVICTED)):
            evictions.append(Eviction(span.start_ns, list(span.attributes.get(EVICTED_HASHES) or []),
                                      span_request.get(span.span_id), int(span.attributes.get(EVICTED) or 0),
                                      _evicted_nodes(span.attributes)))
    evictions.sort(key=lambda e: e.time_ns)
    block_size = next((int(s.attr(CONFIG_BLOCK_SIZE)) for s in steps if s.attr(CONFIG_BLOCK_SIZE)), None)
    if block_size is None:
        block_size = next((int(s.attributes[CONFIG_BLOCK_SIZE]) for group in shape.startup for s in group
                           if s.attributes.get(CONFIG_BLOCK_SIZE)), None)
    lives.sort(key=lambda life: life.arrival_ns)
    engines = trace_engines(spans)
    engine = "sglang" if "sglang" in engines else (sorted(engines)[0] if engines else None)
    mode = trace_mode(spans)
    label, mirrors = catalog.flavor(engine, mode)
    return EngineTimeline(steps, lives, evictions, block_size, bool(shape.startup), shape, engine, mode, label, mirrors)


def _idle_steps(shape: TraceShape, catalog: Catalog) -> list[list[SpanRecord]]:
    """Step traces that scheduled nobody yet decided about a waiting head, in a trace from before such a
    step linked to that head (LINK_WAITING): tracer.traces.shape files them under orphans. An engine steps while a request waits for its grammar
    alone (vLLM 0.33's busy loop steps while scheduler.has_requests(), and step() schedules, core.py:
    1608-1614 and 675-677; ours waits up to 50 ms on the compile each such step): those steps are
    that request's waiting, with its head status as the cause."""
    openers = set(catalog.with_role("step_root")) | set(catalog.with_role("step_opener"))
    batch_hops = set(catalog.with_role("batch"))
    out = []
    for members in shape.orphans.values():
        ids = {s.span_id for s in members}
        tops = [s for s in members if s.parent_span_id is None or s.parent_span_id not in ids]
        if len(tops) == 1 and tops[0].name in openers and any(
                s.name in batch_hops and s.attributes.get(BATCH_IDS) == [] and s.attributes.get(WAITING_HEAD) is not None
                for s in members):
            out.append(members)
    return out


def trace_mode(spans: Iterable[SpanRecord]) -> str:
    """The engine mode the trace's spans name ('' for none): the catalog's targets say which run in one."""
    for span in spans:
        mode = span.attributes.get(ENGINE_MODE)
        if mode:
            return str(mode)
    return ""


def _evicted_nodes(attributes: dict) -> list[dict]:
    columns = [attributes.get(k) or [] for k in (EVICTED_NODE_IDS, EVICTED_NODE_TOKENS, EVICTED_NODE_PARENTS,
                                                  EVICTED_NODE_STARTS, EVICTED_NODE_KEYS)]
    return [dict(zip(("id", "tokens", "parent", "start", "key"), row)) for row in zip(*columns)]


def _external_name(request: RequestTrace, members: list[SpanRecord]) -> str:
    for key in (EXTERNAL_ID, REQUEST_ID):
        value = _first(members, key)
        if value is not None:
            return str(value)
    return request.trace_id[:8]
