"""One call to trace an engine in this process: OpenTelemetry exporters + the catalog's hooks.

For commands that run our engine (`servetrace generate --trace FILE`, `servetrace serve --otlp
URL`): `enable("mini", trace_file=..., otlp_endpoint=...)` before the engine runs, `disable()`
at exit (it flushes). Upstream engines get the same through tracer.instrument.plugins.
"""
from __future__ import annotations

import os

from tracer.instrument import hooks, otel


def enable(
    engine: str = "mini",
    trace_file: str | os.PathLike[str] | None = None,
    otlp_endpoint: str | None = None,
    console: bool = False,
    service_name: str | None = None,
) -> hooks.InstallReport:
    otel.configure(trace_file, otlp_endpoint, console, service_name=service_name or f"servetrace-{engine}", engine=engine)
    return hooks.install(engine, import_modules=engine == "mini")


def disable() -> None:
    hooks.uninstall()
    otel.shutdown()
