"""The engine steps of a trace, as the explorer cuts them: which step-scope root spans make up one
step (the catalog's roles say which hop opens a step and which is its root), and what a step holds.
Split out of tracer.tui.model, which builds requests around these."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from itertools import compress, repeat
from operator import attrgetter
from typing import Any, Callable

from tracer.catalog.hops import Catalog, load_catalog
from tracer.traces.schema import BATCH_IDS, BATCH_TOKENS, STEP
from tracer.traces.trace_file import SpanRecord
from tracer.tui.records import read_array

_start, _end = attrgetter("start_ns"), attrgetter("end_ns")
_span_id, _name = attrgetter("span_id"), attrgetter("name")


@dataclass(frozen=True)
class StepShape:
    """What the catalog says about step traces (hops.yaml's scopes and roles): the model reads
    these, never a hop name."""

    hops: frozenset[str]  # step-scope hops: their root spans make up the steps
    openers: frozenset[str]  # role step_opener: a root span of one of these begins a step
    roots: frozenset[str]  # role step_root: the step's own root (engine.step)
    entrypoints: frozenset[str] = frozenset()  # role entrypoint (http.request): a trace rooted at one is one request
    known: frozenset[str] = frozenset()  # every catalog hop: a span named otherwise is an engine's own
    forward: frozenset[str] = frozenset()  # role forward (model.forward): a trace without one ran no model (replay)

    @classmethod
    def of(cls, catalog: Catalog) -> "StepShape":
        return cls(frozenset(h.name for h in catalog.hops if h.scope == "step"),
                   frozenset(catalog.with_role("step_opener")), frozenset(catalog.with_role("step_root")),
                   frozenset(catalog.with_role("entrypoint")), frozenset(h.name for h in catalog.hops),
                   frozenset(catalog.with_role("forward")))


def step_shape() -> StepShape:
    """The packaged catalog's step shape (a broken catalog is the catalog's test's failure: the
    explorer cannot tell steps from requests without it)."""
    return StepShape.of(load_catalog())


@dataclass(eq=False)
class Step:
    index: int  # position among this trace's steps, from 0
    spans: list[SpanRecord] = field(default_factory=list)  # step-trace spans, chronological
    linked: list[SpanRecord] = field(default_factory=list)  # request spans that link to this step
    request_ids: list[str] = field(default_factory=list)  # the batch's, then those linked without it
    batch_span: SpanRecord | None = None  # the span that carries the batch (its ids and token counts)
    canonical: Callable[[Any], str] = field(default=str, repr=False)  # folds vLLM's internal ids

    @cached_property
    def scheduled_tokens(self) -> dict[str, int]:
        """Tokens scheduled per request (0 for those that took part without being in the batch).
        Read when first asked: opening a trace needs only who took part."""
        tokens = dict.fromkeys(self.request_ids, 0)
        span = self.batch_span
        if span is not None:
            ids = read_array(span, BATCH_IDS)
            counts = read_array(span, BATCH_TOKENS)
            if not isinstance(counts, list) or len(counts) != len(ids):
                counts = [0] * len(ids)
            for rid, n in zip(ids, counts):
                tokens[self.canonical(rid)] = n
        return tokens

    @property
    def number(self) -> int:
        """The engine's own step counter when recorded, else the position from 1."""
        for span in self.spans:
            value = span.attributes.get(STEP)
            if isinstance(value, int):
                return value
        return self.index + 1

    @property
    def start_ns(self) -> int:
        return self.spans[0].start_ns

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)

    def attribute(self, key: str, default: Any = None) -> Any:
        """The last value of `key` on the step's spans (state after the step where it changes)."""
        for span in reversed(self.spans):
            if key in span.attributes:
                return span.attributes[key]
        return default


def segment_steps(
    spans: list[SpanRecord],
    by_trace: dict[str, list[SpanRecord]],
    by_span_id: dict[str, SpanRecord],
    shape: StepShape,
) -> tuple[list[Step], dict[str, Step], set[str]]:
    steps: list[Step] = []
    step_of_span: dict[str, Step] = {}
    step_traces: set[str] = set()
    current: Step | None = None
    openers, roots = shape.openers, shape.roots
    schedulers = openers - roots  # openers that are not the step's own root (scheduler.schedule)
    # Step-scope spans picked out in C (a fraction of all spans), then the roots among them.
    for span in compress(spans, map(shape.hops.__contains__, map(_name, spans))):
        if span.parent_span_id is not None and span.parent_span_id in by_span_id:
            continue
        if span.trace_id in step_traces:
            continue
        # A step root does not open a new step after a schedule that has no step root yet
        # (SGLang schedules before run_batch): it joins that schedule's step.
        opens = span.name in openers and not (
            current is not None and span.name in roots
            and all(s.name in schedulers for s in current.spans if s.parent_span_id is None)
            and not any(s.name in roots for s in current.spans)
        )
        if current is None or opens:
            current = Step(len(steps))
            steps.append(current)
        step_traces.add(span.trace_id)
        members = by_trace[span.trace_id]
        current.spans.extend(members)
        step_of_span.update(zip(map(_span_id, members), repeat(current)))
    for step in steps:
        chronological(step.spans)
    return steps, step_of_span, step_traces



def chronological(spans: list[SpanRecord]) -> None:
    """Sort by start, longest first on ties: two stable sorts, cheaper than a tuple key per span."""
    spans.sort(key=_end, reverse=True)
    spans.sort(key=_start)


def batch_of(step: Step, canonical: Callable[[Any], str]) -> dict[str, None]:
    """The requests the step's batch names, in order (the batch's span noted on the step)."""
    for span in step.spans:
        ids = read_array(span, BATCH_IDS)
        if isinstance(ids, list):
            step.batch_span = span
            return dict.fromkeys(map(canonical, ids))
    return {}
