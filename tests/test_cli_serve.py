"""`servetrace serve` as a user runs it: bad options fail before the model loads; with --trace FILE the
request's trace is written when it is stopped with Ctrl-C or a `kill` (SIGTERM: uvicorn re-raises it
once it has shut down, which ends the process before `serve`'s own flush)."""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import openai
import pytest

from tracer.traces.trace_file import read_trace_file


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_serve_with_trace_writes_the_request_trace_when_stopped(tmp_path, stop):
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
        proc.send_signal(stop)  # at once: the exporter's next batch (every 500 ms) has not been written yet
        proc.wait(timeout=60)
    spans = read_trace_file(trace).spans
    root = next(s for s in spans if s.name == "http.request")
    assert {s.name for s in spans if s.trace_id == root.trace_id} >= {"request.render", "engine.enqueue", "kv.free"}
    assert sum(s.name == "engine.step" for s in spans) >= 3


def test_serve_rejects_a_port_in_use_before_loading_the_model(capsys):
    from tracer.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    error = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1:" in error and "loading model" not in error


def test_serve_rejects_a_queue_bound_below_one(capsys):
    from tracer.cli import main

    assert main(["serve", "--max-queue", "0"]) == 2
    assert "--max-queue must be at least 1" in capsys.readouterr().err
