"""Step-by-step comparison of two scheduler replays: where they first disagree, and on what."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.replay.runners.records import ReplayLog, StepRecord, StepStates, full_state_at

# The decisions compared per step, in the order a reader checks them; "output" is the
# SchedulerOutput's shape (new / cached / resumed, computed tokens, block ids per request).
DECISION_FIELDS = ("arrivals", "scheduled", "admitted", "preempted", "finished", "output", "spec")
# The state after the step: if decisions agree but state does not, the block manager disagrees.
# waiting and num_computed_tokens are compared whole, rebuilt from each log's deltas.
STATE_FIELDS = ("running", "waiting", "num_computed_tokens", "num_free_blocks")


@dataclass
class Divergence:
    step_index: int  # position in both step logs
    step: int  # the replay clock at that position
    fields: list[str]
    left: dict[str, Any]  # the differing fields' values in the left engine
    right: dict[str, Any]
    left_state: dict[str, Any]  # the full step record of each engine at the divergence
    right_state: dict[str, Any]
    left_previous: dict[str, Any] | None = None  # the step before, where both still agreed
    explanation: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    left_engine: str
    right_engine: str
    left_steps: int
    right_steps: int
    agreeing_steps: int
    divergence: Divergence | None
    known_differences: list[str]
    left_stalled: str | None = None
    right_stalled: str | None = None

    @property
    def compared_nothing(self) -> bool:
        """No step was compared (both logs empty): there is nothing to agree on."""
        return self.left_steps == 0 and self.right_steps == 0

    @property
    def agree(self) -> bool:
        # Agreement on zero steps is not agreement: it would pass a replay that never ran.
        return self.divergence is None and self.left_steps == self.right_steps and not self.compared_nothing

    def to_json(self) -> dict:
        data = asdict(self)
        data["agree"] = self.agree
        data["compared_nothing"] = self.compared_nothing
        return data


def _canonical(record: StepRecord, name: str, states: StepStates) -> Any:
    if name == "admitted":
        return [asdict(a) for a in record.admitted]
    if name == "finished":
        return sorted(record.finished)
    if name == "waiting":
        return states.waiting
    if name == "num_computed_tokens":
        return states.num_computed_tokens
    return getattr(record, name)


def known_differences() -> list[str]:
    """The deliberate differences from vLLM named in engine/scheduler.py's docstring."""
    import engine.scheduler

    doc = engine.scheduler.__doc__ or ""
    match = re.search(r"Deliberate differences[^\n]*\n(.*?)(?:\n\s*\n|\Z)", doc, re.S)
    if not match:
        return []
    items = re.split(r"\n- ", "\n" + match.group(1).strip())
    return [" ".join(item.split()) for item in items if item.strip()]


def explain(divergence: Divergence) -> list[str]:
    """Hints for a reader, from which fields differ; they name a place to look, not a verdict."""
    hints = []
    fields_ = set(divergence.fields)
    if "admitted" in fields_:
        left = {a["request_id"]: a["cached_tokens"] for a in divergence.left.get("admitted", [])}
        right = {a["request_id"]: a["cached_tokens"] for a in divergence.right.get("admitted", [])}
        if left.keys() == right.keys():
            hints.append("same admissions, different prefix-cache hits: compare get_computed_blocks / block hashing")
    if "preempted" in fields_:
        hints.append("preemption differs: compare allocate_slots' free-block accounting and the victim choice")
    if fields_ <= set(STATE_FIELDS):
        hints.append("decisions agree but state after the step differs: the block manager frees or caches differently")
    if "output" in fields_ and not fields_ & {"scheduled", "admitted", "preempted"}:
        hints.append("same tokens scheduled, different SchedulerOutput shape: compare which requests go as new / "
                     "cached / resumed and their block ids (Scheduler._make_cached_request_data)")
    if "scheduled" in fields_ and not fields_ & {"admitted", "preempted"}:
        hints.append("token counts differ: compare the budget, long_prefill_token_threshold and max_model_len caps")
    return hints


def compare_logs(left: ReplayLog, right: ReplayLog) -> Comparison:
    """Walk both logs in step; the first step where a decision or the state differs diverges.
    Only the current full state of each side is held (rebuilt from the deltas as the walk goes);
    the full states at the divergence and the step before are rebuilt when it is found."""
    divergence = None
    agreeing = 0
    left_states, right_states = StepStates(), StepStates()
    names = DECISION_FIELDS + STATE_FIELDS
    for index, (a, b) in enumerate(zip(left.steps, right.steps)):
        left_states.apply(a)
        right_states.apply(b)
        differing = [name for name in names if _canonical(a, name, left_states) != _canonical(b, name, right_states)]
        if a.step != b.step:
            differing.insert(0, "step")
        if differing:
            divergence = Divergence(
                step_index=index,
                step=a.step,
                fields=differing,
                left={name: _canonical(a, name, left_states) if name != "step" else a.step for name in differing},
                right={name: _canonical(b, name, right_states) if name != "step" else b.step for name in differing},
                left_state=left_states.full(a),
                right_state=right_states.full(b),
                left_previous=full_state_at(left.steps, index - 1) if index else None,
            )
            divergence.explanation = explain(divergence)
            break
        agreeing += 1
    if divergence is None and len(left.steps) != len(right.steps):
        index = min(len(left.steps), len(right.steps))
        longer, name = (left, "left") if len(left.steps) > len(right.steps) else (right, "right")
        extra = full_state_at(longer.steps, index)
        divergence = Divergence(
            step_index=index,
            step=extra["step"],
            fields=["num_steps"],
            left={"num_steps": len(left.steps)},
            right={"num_steps": len(right.steps)},
            left_state=extra if name == "left" else {},
            right_state=extra if name == "right" else {},
            explanation=[f"one engine finished (or stalled) earlier; the {name} engine still ran steps"],
        )
    return Comparison(
        left_engine=left.engine,
        right_engine=right.engine,
        left_steps=len(left.steps),
        right_steps=len(right.steps),
        agreeing_steps=agreeing,
        divergence=divergence,
        known_differences=known_differences(),
        left_stalled=left.stalled,
        right_stalled=right.stalled,
    )
