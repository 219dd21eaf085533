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
import signal
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

from tracer.catalog.hops import load_catalog
from tracer.instrument import gpu_timing, step_parts
from tracer.instrument.registry import registry
from tracer.traces.schema import CLOCK, ENGINE, ENGINE_VERSION, PROCESS_PID, PROCESS_ROLE, SCHEMA_VERSION, SCHEMA_VERSION_KEY, SERVICE_NAME
from tracer.instrument.exporters import GuardedExporter, OTLPJsonLinesFileExporter

logger = logging.getLogger(__name__)

TRACE_FILE_ENV = "SERVETRACE_TRACE"
SAMPLE_ENV = "SERVETRACE_SAMPLE"
CAPTURE_CONTENT_ENV = "SERVETRACE_CAPTURE_CONTENT"
OTEL_CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
OTLP_ENV = "SERVETRACE_OTLP"
CONSOLE_ENV = "SERVETRACE_CONSOLE"
INSTRUMENTATION_SCOPE = "servetrace"
# "PID:PATH": process PID owns the trace file PATH for this run (see claim_trace_file).
TRACE_OWNER_ENV = "SERVETRACE_TRACE_OWNER"

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
    sample_ratio: float = 1.0,
    process_role: str | None = None,
    clock: str | None = None,
) -> TracerProvider:
    """Start exporting servetrace spans; replaces a previous configuration (after flushing it).
    sample_ratio < 1 keeps that share of requests, each whole (SERVETRACE_SAMPLE). clock: what the
    spans' times measure when it is not the wall clock of a serving run (replay: "steps")."""
    global _provider, _tracer, _atexit_registered, _configured_pid
    if not (trace_file or otlp_endpoint or console):
        raise ValueError("configure() needs a trace file, an OTLP endpoint or console=True")
    attributes = {SERVICE_NAME: service_name, PROCESS_PID: os.getpid(), SCHEMA_VERSION_KEY: SCHEMA_VERSION}
    if process_role:
        attributes[PROCESS_ROLE] = process_role
    if clock:
        attributes[CLOCK] = clock
    if engine:
        attributes[ENGINE] = engine
        version = _engine_version(engine)
        if version:
            attributes[ENGINE_VERSION] = version
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_sampler(sample_ratio))

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

        _report_collector_failures_once(otlp_endpoint)

        add(OTLPSpanExporter(endpoint=otlp_traces_url(otlp_endpoint), timeout=5), f"OTLP {otlp_endpoint}")
    if console:
        add(ConsoleSpanExporter(), "console")

    step_parts.hold_closed_steps(batch)  # creates what the previous configuration held
    with _lock:
        registry.clear()
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


def configure_from_env(engine: str, service_name: str | None = None, process_role: str | None = None) -> TracerProvider | None:
    """Configure from SERVETRACE_TRACE / SERVETRACE_OTLP / SERVETRACE_CONSOLE (and SERVETRACE_SAMPLE);
    None when none is set."""
    trace_file = os.environ.get(TRACE_FILE_ENV) or None
    otlp = os.environ.get(OTLP_ENV) or None
    console = os.environ.get(CONSOLE_ENV, "") not in ("", "0", "false")
    if not (trace_file or otlp or console):
        return None
    if trace_file:
        claim_trace_file(trace_file)
    return configure(trace_file, otlp, console, service_name=service_name or f"servetrace-{engine}", engine=engine,
                     sample_ratio=sample_ratio_from_env(), process_role=process_role)


def claim_trace_file(trace_file: str | os.PathLike[str]) -> bool:
    """Every run owns its trace file: the first process of a traced server (no owner named in its
    environment) empties SERVETRACE_TRACE and names itself in os.environ; the processes it starts
    (vLLM's EngineCore and Workers, SGLang's scheduler and detokenizer) inherit that and append to
    the same file. True: this process emptied the file. A stale owner (another path, or a pid that
    is not an ancestor of this process: a shell that kept the variable) does not count."""
    path = os.path.abspath(os.fspath(trace_file))
    owner_pid, _, owner_path = os.environ.get(TRACE_OWNER_ENV, "").partition(":")
    if owner_path == path and owner_pid.isdigit() and (int(owner_pid) == os.getpid() or _is_ancestor(int(owner_pid))):
        return False
    try:
        with open(path, "w"):
            pass
    except OSError:  # the exporter reports an unwritable file once, where it writes
        pass
    os.environ[TRACE_OWNER_ENV] = f"{os.getpid()}:{path}"
    return True


def _is_ancestor(pid: int) -> bool:
    """pid is this process's parent, grandparent ... (read from /proc; without /proc, trust it)."""
    current = os.getppid()
    for _ in range(64):
        if current == pid:
            return True
        if current <= 1:
            return False
        try:
            with open(f"/proc/{current}/stat") as fh:
                current = int(fh.read().rsplit(")", 1)[1].split()[1])  # the field after the state: ppid
        except (OSError, ValueError, IndexError):
            return not os.path.isdir("/proc")
    return False


def sample_ratio_from_env() -> float:
    text = os.environ.get(SAMPLE_ENV, "").strip()
    if not text:
        return 1.0
    try:
        ratio = float(text)
    except ValueError:
        raise ValueError(f"{SAMPLE_ENV} must be a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{SAMPLE_ENV} must be between 0 and 1, got {ratio}")
    return ratio


def capture_content() -> bool:
    """Prompt / output text and token ids go on upstream spans only when asked for, as OpenTelemetry's
    GenAI instrumentations do (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)."""
    value = os.environ.get(CAPTURE_CONTENT_ENV) or os.environ.get(OTEL_CAPTURE_CONTENT_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


class _WholeRequestSampler(Sampler):
    """Keeps a share of the requests, each whole: a request's root is sampled by its trace id, every
    span under it follows (across processes too: the sampled flag travels in the traceparent); step
    and startup traces are always kept, and link only to the requests kept (tracer.instrument.spans)."""

    def __init__(self, ratio: float) -> None:
        self._requests = TraceIdRatioBased(ratio)
        self._request_roots = frozenset(load_catalog().with_role("request_root"))

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        if name in self._request_roots:
            return self._requests.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"servetrace whole requests ({self._requests.get_description()})"


def _sampler(ratio: float) -> Sampler:
    return ALWAYS_ON if ratio >= 1.0 else ParentBased(root=_WholeRequestSampler(ratio))


def _engine_version(engine: str) -> str | None:
    try:
        spec = load_catalog().engines.get(engine)
    except Exception:  # a broken catalog is reported where it is used; the resource just lacks the version
        return None
    return spec.installed_version() if spec is not None else None


def active_tracer() -> trace.Tracer | None:
    return _tracer


def provider() -> TracerProvider | None:
    """The configured provider of this process (None in a forked child: its resource names the parent)."""
    return _provider if _configured_pid == os.getpid() else None


def flush(timeout_millis: int = 30000) -> bool:
    gpu_timing.drain_pending(wait=True)  # GPU-timed spans end lazily; end them before flushing
    step_parts.create_held()
    return _provider.force_flush(timeout_millis) if _provider is not None else True


class _ReportOnce(logging.Filter):
    """OTel's OTLP exporter (and urllib3 under it) logs every refused batch and every retry: tens of
    lines per process for a collector that is down. Say it once, quoting the first reason, and drop
    the rest; a server's log stays readable and serving goes on."""

    def __init__(self, endpoint: str, host_port: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.host_port = host_port  # urllib3's records are kept unless they are about our collector
        self.reported = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name.startswith("urllib3") and self.host_port not in message.replace("', port=", ":"):
            return True
        if not self.reported:
            self.reported = True
            logger.warning("servetrace: OTLP exporter to %s failed: %s (spans dropped; reported once)",
                           self.endpoint, message[:300])
        return False


def _report_collector_failures_once(endpoint: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(otlp_traces_url(endpoint))
    report = _ReportOnce(endpoint, f"{parts.hostname}:{parts.port or 80}")
    for name in ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.exporter.otlp.proto.http._common",
                 "urllib3.connectionpool"):
        target = logging.getLogger(name)
        for old in [f for f in target.filters if isinstance(f, _ReportOnce)]:
            target.removeFilter(old)  # a reconfigured provider reports afresh
        target.addFilter(report)


def flush_on_sigterm() -> None:
    """A process that leaves SIGTERM at its default dies on it at once, skipping atexit, finally
    blocks and the exporter's last batch: the spans of the last request before a stop were lost
    (SGLang's scheduler and detokenizer get SIGTERM from a `kill` of the server's process group;
    `servetrace serve`, because uvicorn re-raises a captured SIGTERM once it has shut down,
    uvicorn/server.py:348-349 in 0.54.0, before `serve`'s own flush). Here such a process exports
    what is queued first, then dies of the signal as it would have. A process with its own
    handler (vLLM's raise SystemExit, which runs atexit) keeps it."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return

    def flush_then_die(signum: int, _frame: object) -> None:
        try:
            flush(timeout_millis=3000)
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, flush_then_die)


def flush_idle(timeout_millis: int = 2000) -> None:
    """Export what is queued, now (the engine is idle, so waiting for the exporter costs nothing)."""
    step_parts.create_held()
    provider = _provider
    if provider is not None:
        provider.force_flush(timeout_millis)


def shutdown() -> None:
    """Flush and stop exporting; hooks stay installed but become pass-through."""
    global _provider, _tracer
    with _lock:
        previous, _provider, _tracer = _provider, None, None
    if os.environ.get(TRACE_OWNER_ENV, "").startswith(f"{os.getpid()}:"):
        del os.environ[TRACE_OWNER_ENV]  # this process stopped tracing: a server it starts later owns its own run
    # The requests' root contexts belong to the traces just closed: a later configuration (a replay
    # of another engine in the same process) must not hang its requests of the same id under them.
    registry.clear()
    if previous is not None:
        try:
            step_parts.create_held()
            gpu_timing.drain_pending(wait=True)
        except Exception:  # pragma: no cover - shutdown must not raise at exit
            pass
        previous.shutdown()
