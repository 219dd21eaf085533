"""Tracing a replay run with the same hooks that trace live engines (tracer.instrument.hooks + tracer.instrument.otel)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def traced(engine: str, trace_path: Path | None) -> Iterator[list[str]]:
    """Hook `engine`'s catalog targets while the body runs, exporting spans to trace_path
    (OTLP JSON lines). Yields a list that holds a note for the report when no trace is written.

    The engine's modules must already be imported (the runner is built first): hooks on modules
    that are not imported stay deferred, and replay never imports the server-side ones.
    """
    notes: list[str] = []
    if trace_path is None:
        yield notes
        return
    try:
        from tracer.instrument import hooks, otel

        otel.configure(trace_file=str(trace_path), engine=engine, service_name=f"servetrace-replay-{engine}")
        hooks.install(engine)
    except Exception as exc:  # tracing is optional: the replay itself must still run
        notes.append(f"{engine}: no trace file ({type(exc).__name__}: {exc})")
        _shutdown_quietly()
        yield notes
        return
    try:
        yield notes
    finally:
        hooks.uninstall(engine)
        try:
            otel.flush()
        finally:
            otel.shutdown()


def _shutdown_quietly() -> None:
    try:
        from tracer.instrument import otel

        otel.shutdown()
    except Exception:
        pass
