"""A replay's steps against the traced server's own decisions, step by step (replay --from-trace)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracer.replay.runners.records import ReplayLog
from tracer.replay.traced_run import TracedStep

# What is compared per decision step, as the traced server decided it.
TRACED_FIELDS = ("scheduled", "preempted", "finished")


@dataclass
class TraceDivergence:
    step: int  # decision-step index
    fields: list[str]
    traced: dict[str, Any]
    replayed: dict[str, Any]


@dataclass
class TraceComparison:
    engine: str  # the replay's engine (mini, vllm, vllm-0.32.0 ...)
    traced_steps: int
    replayed_steps: int
    agreeing_steps: int
    divergence: TraceDivergence | None
    stalled: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return self.divergence is None and self.traced_steps == self.replayed_steps and self.traced_steps > 0

    def to_json(self) -> dict:
        return {"engine": self.engine, "agree": self.agree, "traced_steps": self.traced_steps,
                "replayed_steps": self.replayed_steps, "agreeing_steps": self.agreeing_steps,
                "divergence": None if self.divergence is None else self.divergence.__dict__,
                "stalled": self.stalled, "notes": self.notes}


def decision_steps(log: ReplayLog) -> list[dict[str, Any]]:
    """The replay's steps that scheduled a token or preempted, as {scheduled, preempted, finished}."""
    out = []
    for record in log.steps:
        scheduled = {str(rid): int(n) for rid, n in record.scheduled if n}
        if scheduled or record.preempted:
            out.append({"scheduled": scheduled, "preempted": sorted(record.preempted),
                        "finished": sorted(rid for rid, _ in record.finished)})
        elif record.finished and out:  # a finish reported by a step that ran nothing belongs to the last one
            out[-1]["finished"] = sorted(set(out[-1]["finished"]) | {rid for rid, _ in record.finished})
    return out


def _traced(step: TracedStep) -> dict[str, Any]:
    return {"scheduled": dict(step.scheduled), "preempted": sorted(step.preempted), "finished": sorted(step.finished)}


def compare_with_trace(engine: str, log: ReplayLog, traced: list[TracedStep]) -> TraceComparison:
    return compare_decisions(engine, decision_steps(log), traced, log.stalled)


def compare_decisions(engine: str, replayed: list[dict[str, Any]], traced: list[TracedStep],
                      stalled: str | None = None) -> TraceComparison:
    """`replayed`: one {scheduled, preempted, finished} per decision step (decision_steps' shape)."""
    divergence, agreeing = None, 0
    for index, (ours, theirs) in enumerate(zip(replayed, (_traced(s) for s in traced))):
        differing = [name for name in TRACED_FIELDS if ours[name] != theirs[name]]
        if differing:
            divergence = TraceDivergence(index, differing, {n: theirs[n] for n in differing}, {n: ours[n] for n in differing})
            break
        agreeing += 1
    if divergence is None and len(replayed) != len(traced):
        index = min(len(replayed), len(traced))
        divergence = TraceDivergence(index, ["num_steps"], {"num_steps": len(traced)}, {"num_steps": len(replayed)})
    return TraceComparison(engine, len(traced), len(replayed), agreeing, divergence, stalled)
