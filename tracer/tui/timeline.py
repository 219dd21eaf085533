"""One request's hops in time (the waterfall), and the engine state at each hop (replay).

Rows run from the request's first span (http.request, or render / enqueue) through every
engine step it took part in, down to model.forward and back, in start order. A request span
that links to a step span (kv.allocate inside scheduler.schedule) is drawn one level under
that step span. Each row carries the state after its hop, carried forward from the rows
before it: that is what the state panel shows as the user steps through.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from tracer.traces.schema import (
    BATCH_IDS, BATCH_TOKENS, BLOCK_IDS, CACHED_TOKENS, EXTERNAL_ID, FREE_BLOCKS, KV_USAGE, LINK_KIND, LINK_STEP,
    NUM_COMPUTED, NUM_NEW_COMPUTED, NUM_NEW_TOKENS, NUM_PREEMPTIONS, NUM_RUNNING, NUM_WAITING, PROCESS_PID, PROCESS_ROLE,
    REQUEST_ID, SERVICE_NAME,
)
from tracer.traces.trace_file import SpanRecord
from tracer.tui.hop_readings import ALLOCATE, PREEMPT, PREFIX_LOOKUP, RELEASES
from tracer.tui.model import Request, Step, TraceModel


@dataclass(frozen=True)
class HopState:
    """What a reader wants to know at one moment of a request's life."""

    step: int | None = None
    num_running: int | None = None
    num_waiting: int | None = None
    kv_usage: float | None = None
    free_blocks: int | None = None
    blocks: tuple[int, ...] = ()  # the request's KV blocks, as far as its spans have shown them
    matched_prefix: int | None = None  # cached tokens found by the prefix lookup
    computed_tokens: int | None = None
    batch: tuple[tuple[str, int], ...] = ()  # (request id, scheduled tokens) of the current step
    preemptions: int = 0
    freed: bool = False


@dataclass(eq=False)
class HopStates:
    """The state at each hop of one waterfall, carried forward hop by hop as far as a reader has
    asked (showing a request needs the first hop's only). It holds the hops' spans and steps, not
    the rows: the waterfall holds its rows and each row holds this, so nothing is cyclic (a
    dropped waterfall goes with its last reference, tests/test_tui_retired_model.py) and a row
    read after its waterfall was dropped still has its state."""

    request_id: str
    hops: list[tuple[SpanRecord, "Step | None"]]
    states: list[HopState] = field(default_factory=list, repr=False)

    def at(self, index: int) -> HopState:
        states, hops, request_id = self.states, self.hops, self.request_id
        while len(states) <= index:
            span, step = hops[len(states)]
            states.append(advance(states[-1] if states else HopState(), span, step, request_id))
        return states[index]


@dataclass(frozen=True, eq=False)
class HopRow:
    span: SpanRecord
    depth: int
    step: Step | None  # the engine step the hop belongs to (or links to)
    hop_states: HopStates = field(repr=False)  # shared by the waterfall's rows
    index: int  # position in the waterfall's rows

    @property
    def state(self) -> HopState:
        return self.hop_states.at(self.index)


@dataclass
class Waterfall:
    request: Request
    rows: list[HopRow] = field(default_factory=list)
    hop_states: HopStates | None = field(default=None, repr=False)

    def state_at(self, index: int) -> HopState:
        return self.rows[index].state

    # Read on every hop move: computed once (rows are not changed after the waterfall is built).
    @cached_property
    def start_ns(self) -> int:
        return min((r.span.start_ns for r in self.rows), default=self.request.start_ns)

    @cached_property
    def end_ns(self) -> int:
        return max((r.span.end_ns for r in self.rows), default=self.request.end_ns)

    @cached_property
    def processes(self) -> dict[int, str]:
        """id(resource) -> the process's label ({} when every hop ran in one process). A process's
        spans share one resource dict (the loader decodes it once per export), so the label is
        found by identity, not by reading each span's resource."""
        labels: dict[int, str] = {}
        for row in self.rows:
            resource = row.span.resource
            if id(resource) not in labels:
                labels[id(resource)] = process_label(resource or {})
        return labels if len(set(labels.values())) > 1 else {}


def process_label(resource: dict) -> str:
    """'engine_core 3832' with the role the resource records, else 'pid 3832'; an engine's own
    tracing (vLLM's llm_request) says whose it is by its service name."""
    role = resource.get(PROCESS_ROLE)
    pid = resource.get(PROCESS_PID)
    label = f"{role} {pid}" if role else (f"pid {pid}" if pid is not None else str(resource.get(SERVICE_NAME, "?")))
    service = str(resource.get(SERVICE_NAME, ""))
    if service and not service.startswith("servetrace"):
        # Not our plugin's resource: the engine's own tracing (vLLM's llm_request), whose
        # resource names no process (vLLM leaves service.name at the SDK's unknown_service).
        return "native" + (f" pid {pid}" if pid is not None else "")
    return label


def _depths(spans: list[SpanRecord], by_span_id: dict[str, SpanRecord]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def of(span: SpanRecord) -> int:
        chain = []
        current: SpanRecord | None = span
        while current is not None and current.span_id not in depth:
            chain.append(current)
            parent = current.parent_span_id
            current = by_span_id.get(parent) if parent else None
            if len(chain) > 64:  # a cycle in a malformed file
                break
        base = depth[current.span_id] + 1 if current is not None and current.span_id in depth else 0
        for offset, item in enumerate(reversed(chain)):
            depth[item.span_id] = base + offset
        return depth[span.span_id]

    for span in spans:
        of(span)
    return depth


def build_waterfall(model: TraceModel, request: Request) -> Waterfall:
    own_depth = _depths(request.spans, model.by_span_id)
    has_root = any(d == 0 for d in own_depth.values()) and any(d > 0 for d in own_depth.values())
    placed: list[tuple[SpanRecord, int, Step | None]] = []
    step_depth: dict[str, int] = {}
    for step in request.steps:
        depths = _depths(step.spans, model.by_span_id)
        for span in step.spans:
            d = depths[span.span_id] + (1 if has_root else 0)
            step_depth[span.span_id] = d
            placed.append((span, d, step))
    for span in request.spans:
        linked_step, depth = None, own_depth[span.span_id]
        for link in span.links:
            if link.attributes.get(LINK_KIND) in (None, LINK_STEP) and link.span_id in step_depth:
                linked_step = model.step_of_span.get(link.span_id)
                depth = step_depth[link.span_id] + 1
                break
        placed.append((span, depth, linked_step))
    # By start, longest first on ties: two stable sorts, cheaper than a tuple key per row.
    placed.sort(key=lambda item: item[0].end_ns, reverse=True)
    placed.sort(key=lambda item: item[0].start_ns)
    hop_states = HopStates(request.request_id, [(span, step) for span, _, step in placed])
    rows = [HopRow(span, depth, step, hop_states, index) for index, (span, depth, step) in enumerate(placed)]
    return Waterfall(request, rows, hop_states)


def advance(state: HopState, span: SpanRecord, step: Step | None, request_id: str) -> HopState:
    """The state after `span`, given the state before it."""
    attrs = span.attributes
    changes: dict[str, Any] = {}
    if step is not None and state.step != step.number:
        changes["step"] = step.number
        changes["batch"] = tuple(step.scheduled_tokens.items())
    ids = attrs.get(BATCH_IDS)
    if isinstance(ids, list):
        tokens = attrs.get(BATCH_TOKENS)
        tokens = tokens if isinstance(tokens, list) and len(tokens) == len(ids) else [0] * len(ids)
        changes["batch"] = tuple((str(r), int(n)) for r, n in zip(ids, tokens))
    for key, name, kind in ((NUM_RUNNING, "num_running", int), (NUM_WAITING, "num_waiting", int),
                            (KV_USAGE, "kv_usage", float), (FREE_BLOCKS, "free_blocks", int)):
        if isinstance(attrs.get(key), (int, float)):
            changes[name] = kind(attrs[key])
    mine = str(attrs.get(REQUEST_ID, "")) == request_id or attrs.get(EXTERNAL_ID) == request_id
    # A replay that drives the cache directly (the radix replay) calls the lookup with a key, not a
    # request: in the request's own waterfall, an anonymous lookup is the request's.
    mine = mine or (span.name == PREFIX_LOOKUP and REQUEST_ID not in attrs and BATCH_IDS not in attrs)
    if mine:
        blocks = attrs.get(BLOCK_IDS)
        if span.name == PREFIX_LOOKUP:
            if CACHED_TOKENS in attrs:
                changes["matched_prefix"] = int(attrs[CACHED_TOKENS])
            if isinstance(blocks, list):
                changes["blocks"] = tuple(int(b) for b in blocks)
            changes["freed"] = False
        elif span.name == ALLOCATE and isinstance(blocks, list):
            changes["blocks"] = state.blocks + tuple(int(b) for b in blocks if int(b) not in state.blocks)
        elif span.name in RELEASES:
            changes["blocks"] = ()
            changes["freed"] = True
        if span.name == PREEMPT:
            changes["preemptions"] = int(attrs.get(NUM_PREEMPTIONS, state.preemptions + 1))
        if isinstance(attrs.get(NUM_COMPUTED), int):
            computed = attrs[NUM_COMPUTED]
            if span.name == ALLOCATE and isinstance(attrs.get(NUM_NEW_TOKENS), int):
                computed += attrs[NUM_NEW_TOKENS] + int(attrs.get(NUM_NEW_COMPUTED, 0) or 0)
            changes["computed_tokens"] = computed
    return replace(state, **changes) if changes else state
