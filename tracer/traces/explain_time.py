"""Where a request's time went: its wall time split by cause, step by step, from the trace alone.

Each cause is an interval on the request's own clock; where two overlap, the one first in PRECEDENCE
counts (a step the request ran in outranks the preemption it resumes from, which outranks waiting
...), so every nanosecond is counted once, and what no cause covers is the residual.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tracer.catalog.hops import Catalog, load_catalog
from tracer.traces.request_steps import EngineTimeline, RequestLife, Step
from tracer.traces.schema import BATCH_SIZE, BATCH_TOTAL, CACHED_TOKENS, CONFIG_POLICY, FORWARD_MODE, WAITING_HEAD
from tracer.traces.sglang_causes import PREFILL_FIRST

# Highest first. "waiting: CODE" and "not scheduled: CODE" labels rank with their prefix.
PRECEDENCE = ("prefill", "recompute", "decode", "preempted", "waiting", "not scheduled", "render",
              "http / to engine", "between steps", "detokenize / stream")


@dataclass
class StepNote:
    step: int
    start_ms: float  # from the request's start
    what: str  # prefill / recompute / decode / waiting: CODE / preempted: CODE / not scheduled: CODE
    detail: str


@dataclass
class TimeSplit:
    request: str
    wall_ms: float
    parts: dict[str, float]  # label -> ms, in PRECEDENCE order then by size
    residual_ms: float
    steps: list[StepNote] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"request": self.request, "wall_ms": self.wall_ms, "parts_ms": self.parts,
                "residual_ms": self.residual_ms, "steps": [vars(s) for s in self.steps]}


def _rank(label: str) -> int:
    for index, name in enumerate(PRECEDENCE):
        if label == name or label.startswith(name + ":"):
            return index
    return len(PRECEDENCE)


def _exclusive(intervals: list[tuple[str, int, int]], start: int, end: int) -> tuple[dict[str, int], int]:
    """Each elementary piece of [start, end] goes to the highest-ranked label covering it."""
    clipped = [(label, max(a, start), min(b, end)) for label, a, b in intervals if min(b, end) > max(a, start)]
    bounds = sorted({start, end, *(a for _, a, _ in clipped), *(b for _, _, b in clipped)})
    totals: dict[str, int] = {}
    uncovered = 0
    for left, right in zip(bounds, bounds[1:]):
        covering = [label for label, a, b in clipped if a <= left and b >= right]
        if covering:
            best = min(covering, key=_rank)
            totals[best] = totals.get(best, 0) + right - left
        else:
            uncovered += right - left
    return totals, uncovered


def _waiting_cause(timeline: EngineTimeline, life: RequestLife, step: Step, running: bool = False) -> tuple[str, str]:
    """The step's cause, or `priority` where a request of higher priority (a lower number, as
    vLLM's RequestQueue orders them) heads the priority queue in its place. A running SGLang
    request sits out a step that runs a new prefill batch (SGLang runs prefill or decode)."""
    if running and step.attr(FORWARD_MODE) == "EXTEND" and timeline.mirrors == "sglang":
        return PREFILL_FIRST
    code, evidence = step.waiting_cause()
    head = step.attr(WAITING_HEAD)
    if step.attr(CONFIG_POLICY) == "priority" and head is not None and str(head) not in life.ids:
        ahead = timeline.find(str(head))
        if ahead is not None and ahead.priority is not None and life.priority is not None and ahead.priority < life.priority:
            return "priority", f"behind {ahead.name} (priority {ahead.priority} < {life.priority}), which waits for {code}: {evidence}"
    return code, evidence


def split_time(timeline: EngineTimeline, life: RequestLife, catalog: Catalog | None = None) -> TimeSplit:
    catalog = catalog or load_catalog()
    render_hops = set(catalog.with_role("render"))
    start, end = life.start_ns, life.end_ns
    intervals: list[tuple[str, int, int]] = []
    notes: list[StepNote] = []

    def note(step: Step, what: str, detail: str) -> None:
        notes.append(StepNote(step.index, (step.start_ns - start) / 1e6, what, detail))

    # Before the engine has it: rendering, then the HTTP handler and the hand-off to the engine.
    for span in life.request.spans:
        if span.name in render_hops and span.end_ns <= life.arrival_ns:
            intervals.append(("render", span.start_ns, span.end_ns))
    intervals.append(("http / to engine", start, life.arrival_ns))

    # The steps it ran in: prefill chunks, recompute after a preemption, decode.
    scheduled = {step.index: tokens for step, tokens in life.scheduled}
    preempt_times = sorted(span.start_ns for span in life.preemptions)
    admissions = 0
    computed, known = life.cached_tokens, life.prompt_tokens
    previous: Step | None = None
    for step, tokens in life.scheduled:
        resumed = any(previous is not None and previous.end_ns <= t <= step.start_ns for t in preempt_times)
        if previous is None or resumed:
            if resumed:
                admissions += 1
                match = life.match_for(step)
                computed = int(match.attributes.get(CACHED_TOKENS) or 0) if match is not None else 0
        before = computed
        if admissions == 0:
            phase = "prefill" if before < life.prompt_tokens else "decode"
        else:
            phase = "recompute" if before < known - 1 else "decode"
        computed += tokens
        if computed >= known:
            known += 1  # the step sampled a token
        intervals.append((phase, step.start_ns, step.end_ns))
        size = step.attr(BATCH_SIZE) or len(step.batch)
        note(step, phase, f"{tokens} token{'' if tokens == 1 else 's'} in a batch of {size} ({step.attr(BATCH_TOTAL)} tokens)")
        previous = step
    first = life.scheduled[0][0] if life.scheduled else None
    last = life.scheduled[-1][0] if life.scheduled else None

    # Waiting before the first step, and preempted until each resume.
    waits = [(life.arrival_ns, first.start_ns if first else end, "waiting")]
    for t in preempt_times:
        resume = next((s for s, _ in life.scheduled if s.start_ns >= t), None)
        waits.append((t, resume.start_ns if resume else end, "preempted"))
    for wait_start, wait_end, label in waits:
        if label == "preempted":
            intervals.append((label, wait_start, wait_end))
        decided = [s for s in timeline.steps if wait_start < s.schedule.start_ns < wait_end and s.index not in scheduled]
        # Until the first step that decided without it: the step running when it arrived had
        # already scheduled, or the engine loop had not yet picked it up.
        if label == "waiting":
            intervals.append(("waiting: for the next step", wait_start, decided[0].start_ns if decided else wait_end))
        for k, step in enumerate(decided):
            code, evidence = _waiting_cause(timeline, life, step)
            step_end = decided[k + 1].start_ns if k + 1 < len(decided) else wait_end
            if label == "waiting":
                intervals.append((f"waiting: {code}", step.start_ns, step_end))
            note(step, f"{label}: {code}", evidence)

    # Between its steps while running (steps it sat out without a preemption, and the engine loop's gaps).
    if first is not None and last is not None:
        intervals.append(("between steps", first.end_ns, last.start_ns))
        for step in timeline.steps:
            if first.index < step.index < last.index and step.index not in scheduled and \
                    not any(a <= step.start_ns <= b for a, b, label in waits if label == "preempted"):
                code, evidence = _waiting_cause(timeline, life, step, running=True)
                intervals.append((f"not scheduled: {code}", step.start_ns, step.end_ns))
                note(step, f"not scheduled: {code}", evidence)
        intervals.append(("detokenize / stream", last.end_ns, end))

    totals, uncovered = _exclusive(intervals, start, end)
    parts = {label: ns / 1e6 for label, ns in sorted(totals.items(), key=lambda item: (_rank(item[0]), -item[1]))}
    notes.sort(key=lambda n: n.step)
    return TimeSplit(life.name, (end - start) / 1e6, parts, uncovered / 1e6, notes)
