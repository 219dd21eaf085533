"""One call to trace an engine in this process: OpenTelemetry exporters + the catalog's hooks.

For commands that run our engine (`servetrace generate --trace FILE`, `servetrace serve --otlp
URL`): `enable("mini", trace_file=..., otlp_endpoint=...)` before the engine runs, `disable()`
at exit (it flushes). For a run of known extent (a trace recipe, a lab, a test's traced run):
`with traced("mini", path) as report:` around it. Upstream engines get the same through
tracer.instrument.plugins.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tracer.instrument import hooks, otel


def enable(
    engine: str = "mini",
    trace_file: str | os.PathLike[str] | None = None,
    otlp_endpoint: str | None = None,
    console: bool = False,
    service_name: str | None = None,
) -> hooks.InstallReport:
    otel.configure(trace_file, otlp_endpoint, console, service_name=service_name or f"servetrace-{engine}", engine=engine)
    report = hooks.install(engine, import_modules=engine == "mini")
    # A `kill` of a traced command (SIGTERM) still writes its last spans; uvicorn restores this
    # handler and re-raises the signal once `servetrace serve` has shut down.
    otel.flush_on_sigterm()
    return report


def disable() -> None:
    hooks.uninstall()
    otel.shutdown()


@contextmanager
def traced(
    engine: str,
    trace_file: str | os.PathLike[str],
    *,
    service_name: str = "servetrace",  # otel.configure's own default
    batch: bool = True,
    import_modules: bool | None = None,
) -> Iterator[hooks.InstallReport]:
    """Trace `engine` into trace_file (OTLP/JSON lines) while the body runs; yields the hooks'
    InstallReport. import_modules defaults to enable()'s rule: our engine's modules are imported
    and hooked now; an upstream engine's are hooked as they are imported (the caller has imported
    what it drives). batch=False writes each span as it ends (one line a span, at once).

    Teardown, in this order: flush (only after a body that returned: GPU-timed spans end lazily,
    and the queued spans are written before anything is undone), restore every hooked original
    (hooks.uninstall(): all engines), then stop the provider, which flushes what an interrupted
    body left and forgets the run's request roots (a later traced run of the same ids starts
    fresh traces)."""
    otel.configure(trace_file=trace_file, engine=engine, service_name=service_name, batch=batch)
    try:
        report = hooks.install(engine, import_modules=engine == "mini" if import_modules is None else import_modules)
        yield report
        otel.flush()
    finally:
        hooks.uninstall()
        otel.shutdown()
