"""`servetrace demo --engine vllm|sglang` end to end, as a user without a terminal runs it: a real
live server is started (one at a time: each test's demo stops its server before it returns), four
chats go over HTTP, the summary is printed in place of the explorer, and the trace is kept where
--trace says (a rerun replaces the file). Each test takes the server's startup plus a few seconds
(measured: vLLM about 35 s, SGLang about 60 s)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

import tracer.live.vllm
from tracer import cli
from tracer.traces import schema
from tracer.traces.trace_file import read_trace_file

DEMO_IDS = {"demo-stream", "demo-plain", "demo-prefix-1", "demo-prefix-2"}


def run_demo(engine: str, trace, tmp_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracer.cli", "demo", "--engine", engine, "--trace", str(trace),
         "--out", str(tmp_path / "out"), "--max-tokens", "4"],
        capture_output=True, text=True, timeout=420, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )


def check_demo(engine: str, tmp_path, min_cached: int) -> None:
    trace = tmp_path / "kept" / "trace.jsonl"
    trace.parent.mkdir()
    trace.write_text("a previous run's line, which the demo must replace\n")
    result = run_demo(engine, trace, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    err = result.stderr
    assert "still starting" in err or "ready after" in err
    assert re.search(r"\d+ requests, \d+ engine steps, \d+ spans", err), err[-3000:]  # the explorer's summary
    assert f"servetrace tui {trace}" in err
    assert "previous run" not in trace.read_text()
    spans = read_trace_file(trace).spans
    sent = {s.attributes.get(schema.HTTP_REQUEST_ID_HEADER) for s in spans} & DEMO_IDS
    assert sent == DEMO_IDS, "every chat the demo sent is in the kept trace"
    found = re.search(r"found (\d+) prompt tokens in the prefix cache", err)
    assert found and int(found.group(1)) >= min_cached, err[-3000:]
    assert not (tmp_path / "out").exists(), "--trace given: nothing written to --out"


@pytest.mark.timeout(480)
def test_demo_on_a_live_vllm_server_prints_the_summary_and_keeps_the_trace(tmp_path):
    check_demo("vllm", tmp_path, min_cached=128)  # vLLM caches whole 128-token CPU blocks


@pytest.mark.timeout(480)
def test_demo_on_a_live_sglang_server_prints_the_summary_and_keeps_the_trace(tmp_path):
    check_demo("sglang", tmp_path, min_cached=128)


def test_demo_without_the_live_venv_says_run_make_setup(tmp_path, monkeypatch, capsys):
    # The launcher finds .venv-vllm under the checkout root; a root without one is a user who never ran setup.
    monkeypatch.setattr(tracer.live.vllm, "project_root", lambda: tmp_path)
    status = cli.main(["demo", "--engine", "vllm", "--trace", str(tmp_path / "t.jsonl")])
    err = capsys.readouterr().err
    assert status == 1
    assert "live vLLM venv is missing" in err and "make setup" in err

