"""`servetrace serve --api-key` against a real server on 127.0.0.1, driven by the official openai
client: without the key 401 in OpenAI's error shape, /health open, the key in no trace or log."""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import openai
import pytest

from tests.test_server import RunningServer, shared_engine

KEY = "sk-servetrace-test-7f3a91c2"


@pytest.fixture(scope="module")
def traced_server(tmp_path_factory):
    from tracer.instrument import tracing

    trace = tmp_path_factory.mktemp("auth") / "trace.jsonl"
    tracing.enable("mini", trace_file=trace)
    server = RunningServer(shared_engine(), api_key=KEY).start()
    try:
        yield server, trace
    finally:
        server.stop()
        tracing.disable()


def test_requests_without_the_key_get_401_in_openais_shape(traced_server):
    server, _ = traced_server
    model = server.app.state.serving.served_model_name
    client = openai.OpenAI(base_url=server.base_url, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.completions.create(model=model, prompt="Hi", max_tokens=2)
    assert info.value.status_code == 401
    assert info.value.body == {"message": "incorrect API key", "type": "AuthenticationError", "param": None, "code": 401}
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    # No Authorization header at all (the openai client always sends one).
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/completions", body=json.dumps({"model": model, "prompt": "Hi", "max_tokens": 2}),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 401 and body["error"]["code"] == 401 and "missing API key" in body["error"]["message"]


def test_the_key_serves_and_health_stays_open(traced_server, caplog):
    server, trace = traced_server
    caplog.set_level(logging.DEBUG)
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    model = client.models.list().data[0].id
    out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0)
    assert out.usage.completion_tokens == 3
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/health")
    assert connection.getresponse().status == 200
    from tracer.instrument import otel

    otel.flush()
    text = trace.read_text()
    assert "http.request" in text and KEY not in text
    assert all(KEY not in record.getMessage() for record in caplog.records)


def _start_serve(*flags: str, env: dict | None = None) -> tuple[subprocess.Popen, list[str], str]:
    """`servetrace serve` in a process; returns it, the stderr lines so far and the URL it serves."""
    proc = subprocess.Popen([sys.executable, "-m", "tracer.cli", "serve", "--port", "0", "--num-blocks", "32", *flags],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {''.join(lines)}")
        lines.append(line)
        match = re.search(r"on (http://\S+/v1)", line)
        if match:
            return proc, lines, match.group(1)
    raise AssertionError("serve never said where it listens")


def _wait_for(url: str, key: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    for _ in range(100):  # the line is printed just before uvicorn accepts
        try:
            client.models.list()
            return client
        except openai.APIConnectionError:
            time.sleep(0.1)
    return client


def test_serve_reads_the_key_from_servetrace_api_key_and_keeps_it_out_of_its_output():
    env = {**os.environ, "SERVETRACE_API_KEY": KEY}
    proc, lines, url = _start_serve(env=env)
    try:
        client = _wait_for(url, KEY)
        assert client.models.list().data
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="nope", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    output = "".join(lines) + rest
    assert "Authorization: Bearer <key>" in output and KEY not in output and "warning: serving" not in output


def test_binding_beyond_loopback_without_a_key_warns_before_loading():
    proc, lines, url = _start_serve("--host", "0.0.0.0")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    text = "".join(lines)
    assert "warning: serving on 0.0.0.0 without --api-key" in text
    assert text.index("warning: serving") < text.index("loading model")
