"""One live vLLM server start for tests/test_live_faults.py's faults and its speculation test (each
start is about 40 s of the suite): the vLLM CPU build with
n-gram speculation, its OTLP exporter pointed at a port nothing listens on, a copy-heavy request
first (speculation's spans), then finished requests of each route, then a stream cut by a SIGKILL
of every server process. Registered for the suite in tests/conftest.py."""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from tracer.live.vllm import VllmOptions, vllm_server

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


@pytest.fixture(scope="session")
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
