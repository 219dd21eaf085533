"""A traced process killed with SIGTERM (how a server's process group is stopped) first exports the
spans it still holds, then dies of the signal as it would have untraced: an upstream server's processes
(the plugin) and our own commands (tracing.enable: `servetrace serve --trace`, where uvicorn re-raises
the SIGTERM it captured once it has shut down, before `serve`'s own flush)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from tracer.instrument import plugins, otel, tracing
    if sys.argv[1] == "plugin":
        plugins._install("mini")
    else:
        tracing.enable("mini", trace_file=os.environ["SERVETRACE_TRACE"])
    tracer = otel.active_tracer()
    tracer.start_span("engine.enqueue", attributes={"gen_ai.request.id": "last-request"}).end()
    print("ready", flush=True)
    time.sleep(30)  # the batch exporter would wait 500 ms; the kill comes first
""")


def run_child(tmp_path, handler_first: bool = False, how: str = "plugin"):
    trace = tmp_path / "trace.jsonl"
    code = ("import signal; signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(SystemExit(3)))\n" if handler_first else "") + CHILD
    child = subprocess.Popen([sys.executable, "-c", code, how], stdout=subprocess.PIPE, text=True,
                             env={"SERVETRACE_TRACE": str(trace), "PATH": "/usr/bin:/bin"})
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    return child.wait(timeout=30), trace


@pytest.mark.parametrize("how", ["plugin", "tracing.enable"])
def test_sigterm_exports_the_queued_spans_then_the_process_dies_of_it(tmp_path, how):
    status, trace = run_child(tmp_path, how=how)
    assert status == -signal.SIGTERM
    names = [span["name"] for line in trace.read_text().splitlines() for rs in json.loads(line)["resourceSpans"]
             for ss in rs["scopeSpans"] for span in ss["spans"]]
    assert names == ["engine.enqueue"]


def test_a_process_with_its_own_sigterm_handler_keeps_it(tmp_path):
    status, _ = run_child(tmp_path, handler_first=True)
    assert status == 3
