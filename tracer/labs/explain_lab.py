"""`servetrace explain` on a trace recipe's trace: the walkthroughs show what it says about their
labs' requests (why each prefix lookup hit what it hit, where each request's time went), generated
at build time from the same recording the page's timeline shows, never pasted."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tracer.labs.recipes import RECIPES
from tracer.labs.registry import Lab, LabError, LabResult, Table, environment, load_average

TOP_CAUSES = 3  # a row stays readable; `servetrace explain` prints them all


def explain_recipe(recipe: str = "mini-shared-prefix") -> LabResult:
    from tracer.traces.explain_cache import explain_cache
    from tracer.traces.explain_time import split_time
    from tracer.traces.request_steps import read_timeline
    from tracer.traces.trace_file import read_trace_file

    if recipe not in RECIPES:
        raise LabError(f"no trace recipe named {recipe!r}; recipes: {', '.join(sorted(RECIPES))}")
    load_at_start = load_average()
    with tempfile.TemporaryDirectory() as scratch, _content_capture():
        commands = RECIPES[recipe].record(Path(scratch))
        timeline = read_timeline(read_trace_file(Path(scratch) / "trace.jsonl").spans)
    cache_rows, time_rows = [], []
    for life in timeline.requests:
        miss, split = explain_cache(timeline, life), split_time(timeline, life)
        cost = f"{miss.uncached_tokens} tokens, ~{miss.est_prefill_ms:.1f} ms" if miss.est_prefill_ms is not None else f"{miss.uncached_tokens} tokens"
        cache_rows.append([life.name, miss.prompt_tokens, miss.cached_tokens, miss.reason, miss.evidence, cost])
        top = sorted(split.parts.items(), key=lambda item: -item[1])[:TOP_CAUSES]
        causes = "; ".join(f"{label} {ms:.1f} ms ({ms / split.wall_ms:.0%})" for label, ms in top) if split.wall_ms else ""
        waits = sorted({n.what for n in split.steps if n.what.startswith(("waiting:", "preempted:", "not scheduled:"))})
        time_rows.append([life.name, f"{split.wall_ms:.1f}", causes, ", ".join(waits) or "-", f"{split.residual_ms:.2f}"])
    trace_command = f"servetrace explain trace.jsonl   # the trace of `{commands[0]}`" if commands else "servetrace explain trace.jsonl"
    cache = Table(
        "servetrace explain: each request's prefix-cache lookup",
        ["request", "prompt tokens", "cached", "reason", "evidence", "computed (est. prefill)"],
        cache_rows,
        "The reason is for the first block (page) the lookup missed; the estimate prices the computed tokens at the "
        "request's own measured prefill rate in this trace.",
    )
    time = Table(
        "servetrace explain: where each request's time went",
        ["request", "wall ms", f"largest causes (of {TOP_CAUSES} shown)", "why it waited, per step", "residual ms"],
        time_rows,
        "Every moment of a request's wall time goes to one cause, by a stated precedence (prefill > recompute > decode > "
        "preempted > waiting > ...); the waiting causes are read off the scheduler state each step's schedule span recorded.",
    )
    return LabResult("explain", f"servetrace explain on the {recipe} trace", {}, [cache, time],
                     notes=[trace_command, "recorded with SERVETRACE_CAPTURE_CONTENT=1, so that a token-differs names the "
                            "position and the two token ids"], environment=environment(load_at_start))


@contextmanager
def _content_capture() -> Iterator[None]:
    from tracer.instrument.otel import CAPTURE_CONTENT_ENV

    saved = os.environ.get(CAPTURE_CONTENT_ENV)
    os.environ[CAPTURE_CONTENT_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(CAPTURE_CONTENT_ENV, None)
        else:
            os.environ[CAPTURE_CONTENT_ENV] = saved


LABS = [Lab("explain", "servetrace explain on a trace recipe's trace", explain_recipe, {"recipe": "mini-shared-prefix"})]
