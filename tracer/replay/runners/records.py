"""What a scheduler replay records per step: the step's decisions in full, the state as deltas.

A step's decisions (arrivals, tokens scheduled, admissions, preemptions, finishes, the
SchedulerOutput's shape) are small and recorded whole. The state after the step is recorded as
what changed: the running queue whole (at most max_num_seqs ids), the waiting queue only on steps
where it changed (None: as the step before), and num_computed_tokens only of the requests whose
count could have moved (those that arrived, ran or were preempted this step; nothing else touches
it in a replay: no aborts or connectors; a speculative rollback happens in a step the request ran). Recording every unfinished
request every step made a 1,000-request replay hold millions of counters (issue 15).
`StepStates` rebuilds the full state of any step from the deltas; it reads a log whose records
carry full maps and lists just as well (they are deltas that happen to name everything).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Admission:
    request_id: str
    cached_tokens: int  # num_computed_tokens when admitted: the prefix-cache hit
    resumed: bool  # re-admitted after a preemption


# How the SchedulerOutput sent a request (vllm/v1/core/sched/output.py:231-240 SchedulerOutput).
NEW, CACHED, RESUMED = "new", "cached", "resumed"


@dataclass
class StepRecord:
    step: int
    arrivals: list[str]
    scheduled: list[list[Any]]  # [[request_id, num_tokens], ...] in the scheduler's order
    admitted: list[Admission]
    preempted: list[str]
    finished: list[list[str]]  # [[request_id, finish_reason], ...]
    running: list[str]  # the running queue after the step
    # The waiting queue after the step (priority order for the priority policy); None: unchanged.
    waiting: list[str] | None
    # After the step, of the requests whose count may have changed (see the module docstring).
    num_computed_tokens: dict[str, int]
    num_free_blocks: int
    # The SchedulerOutput as sent: [[request_id, NEW | CACHED | RESUMED, num_computed_tokens,
    # block ids], ...], new requests first, then cached ones (running, then resumed), as vLLM
    # orders them. Block ids: a new or resumed request's whole table, a running one's new blocks
    # (None when it got none).
    output: list[list[Any]] = field(default_factory=list)
    # Speculative decoding: [[request_id, drafts scheduled, drafts accepted], ...] ([]: none).
    spec: list[list[Any]] = field(default_factory=list)
    schedule_seconds: float = 0.0
    update_seconds: float = 0.0

    def to_json(self) -> dict:
        # By hand, not dataclasses.asdict: asdict deep-copies every nested list, per step.
        return {
            "step": self.step, "arrivals": self.arrivals, "scheduled": self.scheduled,
            "admitted": [{"request_id": a.request_id, "cached_tokens": a.cached_tokens, "resumed": a.resumed}
                         for a in self.admitted],
            "preempted": self.preempted, "finished": self.finished, "running": self.running,
            "waiting": self.waiting, "num_computed_tokens": self.num_computed_tokens,
            "num_free_blocks": self.num_free_blocks, "output": self.output,
            "schedule_seconds": self.schedule_seconds, "update_seconds": self.update_seconds,
            **({"spec": self.spec} if self.spec else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> "StepRecord":
        data = dict(data)
        data["admitted"] = [Admission(**a) for a in data["admitted"]]
        return cls(**data)


class StepStates:
    """The full state after each step, rebuilt from a log's deltas while walking it in order."""

    def __init__(self) -> None:
        self.num_computed_tokens: dict[str, int] = {}
        self.waiting: list[str] = []

    def apply(self, record: StepRecord) -> None:
        self.num_computed_tokens.update(record.num_computed_tokens)
        for request_id, _ in record.finished:
            self.num_computed_tokens.pop(request_id, None)
        if record.waiting is not None:
            self.waiting = record.waiting

    def full(self, record: StepRecord) -> dict[str, Any]:
        """The record as a dict with the full state in place of the deltas (after apply(record))."""
        data = record.to_json()
        data.pop("schedule_seconds")
        data.pop("update_seconds")
        data["waiting"] = list(self.waiting)
        data["num_computed_tokens"] = dict(self.num_computed_tokens)
        return data


def full_states(steps: list[StepRecord]) -> Iterator[dict[str, Any]]:
    """Each step's record with its full state, in order."""
    states = StepStates()
    for record in steps:
        states.apply(record)
        yield states.full(record)


def full_state_at(steps: list[StepRecord], index: int) -> dict[str, Any]:
    """The record of steps[index] with its full state (walks the deltas from the start)."""
    states = StepStates()
    for record in steps[: index + 1]:
        states.apply(record)
    return states.full(steps[index])


@dataclass
class ReplayLog:
    engine: str
    config: dict
    steps: list[StepRecord] = field(default_factory=list)
    stalled: str | None = None  # why the replay stopped early, if it did

    @property
    def schedule_seconds(self) -> float:
        return sum(s.schedule_seconds for s in self.steps)

    @property
    def update_seconds(self) -> float:
        return sum(s.update_seconds for s in self.steps)

    def to_json(self) -> dict:
        return {
            "engine": self.engine,
            "config": self.config,
            "stalled": self.stalled,
            "num_steps": len(self.steps),
            "schedule_seconds": self.schedule_seconds,
            "update_seconds": self.update_seconds,
            "steps": [s.to_json() for s in self.steps],
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One step per line: readable, and far faster to write than an indented tree.
        data = self.to_json()
        steps = data.pop("steps")
        head = json.dumps(data, indent=1)[:-2]
        body = ",\n".join(json.dumps(s, separators=(",", ":")) for s in steps)
        path.write_text(f'{head},\n "steps": [\n{body}\n ]\n}}\n')
        return path

    @classmethod
    def read(cls, path: str | Path) -> "ReplayLog":
        data = json.loads(Path(path).read_text())
        return cls(data["engine"], data["config"], [StepRecord.from_json(s) for s in data["steps"]], data.get("stalled"))
