"""Tracing a replay run with the same hooks that trace live engines, when they are installed."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def traced(engine: str, trace_path: Path | None) -> Iterator[str | None]:
    """Install the tracer's hooks for `engine` while the body runs, writing spans to trace_path.

    Yields a note for the report when no trace is written (no path, or no hooks available).
    """
    if trace_path is None:
        yield None
        return
    try:
        from tracer import hooks  # noqa: F401  (written by the tracing work; optional here)
    except ImportError:
        yield f"{engine}: no trace file (tracer.hooks is not available)"
        return
    yield f"{engine}: no trace file (tracer.hooks has no replay entry point yet)"
