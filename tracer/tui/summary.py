"""The explorer's content as Rich tables, for a terminal-less run (`make demo` in CI, pipes)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tracer.tui.compare import compare_models
from tracer.tui.format import count, ms
from tracer.tui.loader import load_trace
from tracer.tui.model import TraceModel, build_model
from tracer.tui.step_time import CLOCK_LABELS, StepClock, steps, trace_clock

MAX_REQUESTS = 20


def requests_table(model: TraceModel, limit: int = MAX_REQUESTS) -> Table:
    engine = f" ({model.engine_label})" if model.engine_label else ""
    table = Table(title=f"{Path(model.path).name}{engine}: {len(model.requests)} requests, "
                        f"{len(model.steps)} engine steps, {len(model.spans)} spans")
    kind = trace_clock(model)  # a replay: no model ran, times count steps; whatif: predicted ms
    ttft_label, latency_label = CLOCK_LABELS[kind]
    for name, justify in (("request", "left"), ("prompt", "right"), ("output", "right"), ("cached", "right"),
                          (ttft_label, "right"), (latency_label, "right"), ("steps", "right"), ("status", "left")):
        table.add_column(name, justify=justify)
    clock = StepClock(model) if kind == "steps" else None
    for request in list(model.requests.values())[:limit]:
        ttft, latency = ((steps(clock.ttft(request)), steps(clock.latency(request))) if clock
                         else (ms(request.ttft_ns), ms(request.latency_ns)))
        table.add_row(request.request_id, count(request.prompt_tokens), count(request.output_tokens),
                      count(request.cached_tokens), ttft, latency,
                      str(len(request.steps)), request.status)
    if len(model.requests) > limit:
        table.caption = f"first {limit} of {len(model.requests)} requests"
    return table


def print_summary(trace_paths: Sequence[str | Path], console: Console | None = None) -> list[TraceModel]:
    """Print what the explorer would show: per trace its requests; for the last two, the step comparison."""
    console = console or Console()
    models = [build_model(load_trace(path)) for path in trace_paths]
    for model in models:
        if model.warning():
            console.print(f"[yellow]{model.warning()}[/yellow]")
        console.print(requests_table(model))
    if len(models) >= 2:
        comparison = compare_models(models[-2], models[-1])
        left, right = (m.engine or Path(m.path).name for m in models[-2:])
        console.print(comparison.verdict(left, right)[0])
    return models
