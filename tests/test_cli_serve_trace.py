"""`servetrace serve --trace FILE`: the command a user runs, traced, then stopped with Ctrl-C."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import openai

from tracer.trace_file import read_trace_file


def test_serve_with_trace_writes_the_request_trace_on_ctrl_c(tmp_path):
    trace = tmp_path / "serve.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer.cli", "serve", "--port", "0", "--num-blocks", "64", "--trace", str(trace)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        deadline, url = time.monotonic() + 180, None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise AssertionError(f"serve exited with {proc.returncode}")
            match = re.search(r"on (http://\S+/v1)", line)
            url = match.group(1) if match else None
        assert url, "the server never said where it listens"
        for _ in range(100):  # the line is printed just before uvicorn starts accepting
            try:
                client = openai.OpenAI(base_url=url, api_key="x")
                model = client.models.list().data[0].id
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        out = client.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0)
        assert out.usage.completion_tokens == 3
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    spans = read_trace_file(trace).spans
    root = next(s for s in spans if s.name == "http.request")
    assert {s.name for s in spans if s.trace_id == root.trace_id} >= {"request.render", "engine.enqueue", "kv.free"}
    assert sum(s.name == "engine.step" for s in spans) >= 3
