"""`make demo`'s job, end to end, without a terminal: a traced chat over HTTP, a replay that agrees
with vLLM, and a summary of the recorded trace."""
from __future__ import annotations

import subprocess
import sys

from tracer.traces.trace_file import read_trace_file


def test_demo_serves_traces_replays_and_summarises(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "tracer.cli", "demo", "--out", str(out), "--max-tokens", "12"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "agree on every step" in result.stderr
    assert "engine steps" in result.stderr  # the summary printed in place of the explorer
    trace = read_trace_file(out / "trace-http.jsonl")
    roots = [s for s in trace.spans if s.name == "http.request"]
    assert len(roots) == 1
    request_spans = [s for s in trace.spans if s.trace_id == roots[0].trace_id]
    assert {"http.request", "request.render", "engine.enqueue", "kv.allocate", "kv.free"} <= {s.name for s in request_spans}
    assert (out / "replay" / "trace-vllm.jsonl").is_file() and (out / "replay" / "trace-mini.jsonl").is_file()
    # How to open the explorer on what was recorded: one command on one line (not wrapped at 80
    # columns, which would break it when copied), naming every trace the explorer opens.
    (command,) = [line for line in result.stderr.splitlines() if "servetrace tui " in line]
    traces = command.split("servetrace tui ", 1)[1].split()
    assert traces == [str(out / "trace-http.jsonl"), str(out / "replay" / "trace-mini.jsonl"),
                      str(out / "replay" / "trace-vllm.jsonl")]
