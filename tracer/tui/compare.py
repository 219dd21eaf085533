"""Two traces of one workload (ours and vLLM's, from `servetrace replay`) aligned step by step.

Replay feeds both engines the same arrivals per step, so the n-th step of one trace is the
n-th step of the other. Per step it compares what a reader checks first: which requests ran
and with how many tokens, preemptions, finishes, queue lengths, free KV blocks, and the
prefix-cache hits of the requests looked up in that step. A field only one trace recorded is
shown but never counted as a difference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from tracer.catalog.hops import load_catalog
from tracer.traces.schema import (
    BATCH_FINISHED, BATCH_PREEMPTED, CACHED_TOKENS, FREE_BLOCKS, NUM_RUNNING, NUM_WAITING, REQUEST_ID,
)
from tracer.tui.hop_readings import PREFIX_LOOKUP
from tracer.tui.model import Step, TraceModel

FIELDS = ("batch", "preempted", "finished", "cached", "running", "waiting", "free_blocks")
MISSING = object()


def step_fields(step: Step | None) -> dict[str, Any]:
    """The compared values of one step; absent keys were not recorded."""
    if step is None:
        return {}
    out: dict[str, Any] = {}
    # The batch itself: a request that only took part (SGLang's longest-prefix policy looks every
    # waiting request up each step, linking its lookup to the step) scheduled no tokens in it.
    batch = {rid: n for rid, n in step.scheduled_tokens.items() if n}
    if batch:
        out["batch"] = batch
    for key, name in ((BATCH_PREEMPTED, "preempted"), (BATCH_FINISHED, "finished")):
        value = step.attribute(key)
        if isinstance(value, list):
            out[name] = sorted(str(v) for v in value)
    cached = {str(s.attributes[REQUEST_ID]): s.attributes[CACHED_TOKENS]
              for s in step.linked if s.name == PREFIX_LOOKUP and CACHED_TOKENS in s.attributes}
    if cached:
        out["cached"] = cached
    for key, name in ((NUM_RUNNING, "running"), (NUM_WAITING, "waiting"), (FREE_BLOCKS, "free_blocks")):
        value = _schedule_attribute(step, key)
        if value is not None:
            out[name] = value
    return out


@cache
def _batch_hops() -> frozenset[str]:
    return frozenset(load_catalog().with_role("batch"))


def _schedule_attribute(step: Step, key: str) -> Any:
    # State right after scheduling: the view of the span that chose the batch (catalog role
    # "batch": scheduler.schedule); the update span's comes later.
    batch_hops = _batch_hops()
    for span in step.spans:
        if span.name in batch_hops and key in span.attributes:
            return span.attributes[key]
    return step.attribute(key)


@dataclass
class StepPair:
    index: int
    left: Step | None
    right: Step | None
    left_fields: dict[str, Any] = field(default_factory=dict)
    right_fields: dict[str, Any] = field(default_factory=dict)
    differing: tuple[str, ...] = ()

    @property
    def agree(self) -> bool:
        return not self.differing


@dataclass
class Comparison:
    left: TraceModel
    right: TraceModel
    pairs: list[StepPair]

    @property
    def divergent(self) -> list[int]:
        return [p.index for p in self.pairs if not p.agree]

    @property
    def first_divergence(self) -> int | None:
        return next((p.index for p in self.pairs if not p.agree), None)

    @property
    def compared_steps(self) -> int:
        """Steps where both traces recorded at least one compared field: the steps agreement is about."""
        return sum(1 for p in self.pairs if p.left is not None and p.right is not None
                   and any(name in p.right_fields for name in p.left_fields))

    def verdict(self, left_name: str, right_name: str) -> tuple[str, bool]:
        """The one-line summary and whether it is agreement. Nothing compared is never agreement:
        a radix replay's SGLang trace has no steps, and "agree on all 0 steps" claimed too much."""
        first = self.first_divergence
        if first is not None:
            return (f"{left_name} vs {right_name}: {len(self.divergent)} of {len(self.pairs)} steps differ; "
                    f"first at step {first + 1} ({', '.join(self.pairs[first].differing)})", False)
        compared = self.compared_steps
        if compared == 0:
            return (f"{left_name} vs {right_name}: nothing to compare ({len(self.left.steps)} and "
                    f"{len(self.right.steps)} steps, none with a field recorded in both traces)", False)
        if compared < len(self.pairs):
            return (f"{left_name} vs {right_name}: agree on the {compared} of {len(self.pairs)} steps "
                    "both traces recorded fields for", True)
        return f"{left_name} vs {right_name}: agree on all {compared} steps", True

    def next_divergence(self, after: int, backwards: bool = False) -> int | None:
        indexes = self.divergent
        if backwards:
            return next((i for i in reversed(indexes) if i < after), None)
        return next((i for i in indexes if i > after), None)


def compare_models(left: TraceModel, right: TraceModel) -> Comparison:
    pairs = []
    for index in range(max(len(left.steps), len(right.steps))):
        a = left.steps[index] if index < len(left.steps) else None
        b = right.steps[index] if index < len(right.steps) else None
        fa, fb = step_fields(a), step_fields(b)
        if a is None or b is None:
            differing: tuple[str, ...] = ("step",)
        else:
            differing = tuple(name for name in FIELDS if name in fa and name in fb and fa[name] != fb[name])
        pairs.append(StepPair(index, a, b, fa, fb, differing))
    return Comparison(left, right, pairs)
