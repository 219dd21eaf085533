"""Every lab by name: the scheduler labs (replay, no model) and the engine labs (the bundled model)."""
from __future__ import annotations

from tracer.labs import engine_labs, scheduler_labs
from tracer.labs.registry import Lab


def registry() -> dict[str, Lab]:
    return {lab.name: lab for lab in scheduler_labs.LABS + engine_labs.LABS}
