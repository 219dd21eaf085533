"""OpenTelemetry setup for servetrace: one TracerProvider of our own (not the global one, so an
engine's own OTel setup, e.g. vLLM's --otlp-traces-endpoint, is left alone), with any of
three exporters: OTLP/JSON-lines file, OTLP/HTTP to a collector, console.

The hooks ask `active_tracer()` on every call; when tracing is not configured it returns None
and the wrapped function runs with nothing added but that check.
"""
from __future__ import annotations

import atexit
import multiprocessing.util
import logging
import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

from tracer.instrument import gpu_timing
from tracer.instrument.exporters import GuardedExporter, OTLPJsonLinesFileExporter

logger = logging.getLogger(__name__)

TRACE_FILE_ENV = "SERVETRACE_TRACE"
OTLP_ENV = "SERVETRACE_OTLP"
CONSOLE_ENV = "SERVETRACE_CONSOLE"
INSTRUMENTATION_SCOPE = "servetrace"

_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_atexit_registered = False
_configured_pid: int | None = None


def otlp_traces_url(url: str) -> str:
    """A collector base URL (http://host:4318) gets the standard /v1/traces path."""
    stripped = url.rstrip("/")
    if not stripped.startswith(("http://", "https://")):
        raise ValueError(f"OTLP endpoint must be an http(s) URL, got {url!r}")
    return stripped if stripped.endswith("/v1/traces") else stripped + "/v1/traces"


def configure(
    trace_file: str | os.PathLike[str] | None = None,
    otlp_endpoint: str | None = None,
    console: bool = False,
    service_name: str = "servetrace",
    engine: str | None = None,
    batch: bool = True,
) -> TracerProvider:
    """Start exporting servetrace spans; replaces a previous configuration (after flushing it)."""
    global _provider, _tracer, _atexit_registered, _configured_pid
    if not (trace_file or otlp_endpoint or console):
        raise ValueError("configure() needs a trace file, an OTLP endpoint or console=True")
    attributes = {"service.name": service_name, "process.pid": os.getpid()}
    if engine:
        attributes["servetrace.engine"] = engine
    provider = TracerProvider(resource=Resource.create(attributes))

    def add(exporter, label: str) -> None:
        guarded = GuardedExporter(exporter, label)
        if batch:
            provider.add_span_processor(
                BatchSpanProcessor(guarded, max_queue_size=1 << 16, schedule_delay_millis=500, max_export_batch_size=1024)
            )
        else:
            provider.add_span_processor(SimpleSpanProcessor(guarded))

    if trace_file:
        add(OTLPJsonLinesFileExporter(trace_file), f"file {trace_file}")
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        add(OTLPSpanExporter(endpoint=otlp_traces_url(otlp_endpoint), timeout=5), f"OTLP {otlp_endpoint}")
    if console:
        add(ConsoleSpanExporter(), "console")

    with _lock:
        previous = _provider
        _provider = provider
        _tracer = provider.get_tracer(INSTRUMENTATION_SCOPE)
        _configured_pid = os.getpid()
        if not _atexit_registered:
            atexit.register(shutdown)
            # A multiprocessing child (vLLM's EngineCore and Worker, SGLang's scheduler) leaves through
            # os._exit, which skips atexit; its exit runs multiprocessing's finalizers instead.
            multiprocessing.util.Finalize(None, shutdown, exitpriority=100)
            _atexit_registered = True
    if previous is not None:
        previous.shutdown()
    return provider


def configure_from_env(engine: str, service_name: str | None = None) -> TracerProvider | None:
    """Configure from SERVETRACE_TRACE / SERVETRACE_OTLP / SERVETRACE_CONSOLE; None when none is set."""
    trace_file = os.environ.get(TRACE_FILE_ENV) or None
    otlp = os.environ.get(OTLP_ENV) or None
    console = os.environ.get(CONSOLE_ENV, "") not in ("", "0", "false")
    if not (trace_file or otlp or console):
        return None
    return configure(trace_file, otlp, console, service_name=service_name or f"servetrace-{engine}", engine=engine)


def active_tracer() -> trace.Tracer | None:
    return _tracer


def provider() -> TracerProvider | None:
    """The configured provider of this process (None in a forked child: its resource names the parent)."""
    return _provider if _configured_pid == os.getpid() else None


def flush(timeout_millis: int = 30000) -> bool:
    gpu_timing.drain_pending(wait=True)  # GPU-timed spans end lazily; end them before flushing
    return _provider.force_flush(timeout_millis) if _provider is not None else True


def flush_idle(timeout_millis: int = 2000) -> None:
    """Export what is queued, now (the engine is idle, so waiting for the exporter costs nothing)."""
    provider = _provider
    if provider is not None:
        provider.force_flush(timeout_millis)


def shutdown() -> None:
    """Flush and stop exporting; hooks stay installed but become pass-through."""
    global _provider, _tracer
    with _lock:
        previous, _provider, _tracer = _provider, None, None
    if previous is not None:
        try:
            gpu_timing.drain_pending(wait=True)
        except Exception:  # pragma: no cover - shutdown must not raise at exit
            pass
        previous.shutdown()
