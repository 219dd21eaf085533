"""Tracing a replay run with the same hooks that trace live engines (tracer.instrument.hooks + tracer.instrument.otel)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


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

        otel.configure(trace_file=str(trace_path), engine=engine, service_name=f"servetrace-replay-{engine}", clock="steps")
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


class RequestTraces:
    """One trace per replayed request for a replay that drives a cache directly (the radix-cache
    replay): a root span of the catalog's enqueue hop, named by the request id, that the request's
    cache calls (match, evict, insert) nest under while `within` it. Without tracing, all no-ops."""

    def __init__(self) -> None:
        from tracer.catalog.hops import load_catalog
        from tracer.instrument import otel

        self._tracer = otel.active_tracer()
        (self._root_hop,) = load_catalog().with_role("enqueue")

    def open(self, request_id: str, attributes: dict) -> Any:
        if self._tracer is None:
            return None
        from opentelemetry import context as otel_context

        from tracer.traces.schema import REQUEST_ID

        return self._tracer.start_span(self._root_hop, context=otel_context.Context(),
                                       attributes={REQUEST_ID: request_id, **attributes})

    @contextmanager
    def within(self, span: Any) -> Iterator[None]:
        if span is None:
            yield
            return
        from opentelemetry import trace

        with trace.use_span(span, end_on_exit=False):
            yield

    def close(self, span: Any, attributes: dict | None = None) -> None:
        if span is not None:
            span.set_attributes(attributes or {})
            span.end()
