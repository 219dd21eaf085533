"""The traffic the live-server tests send, with the official openai client, and what they keep of it.

One server per engine per test run: the fixture starts it, this workload runs once against it, the
server is stopped (so every process has written its spans), and the tests read the raw trace file.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import openai

from tracer.traces.shape import TraceShape, analyse
from tracer.traces.trace_file import TraceFile, read_trace_file

# Long enough to fill several KV blocks (vLLM's CPU block is 128 tokens), so the second request
# that shares it finds whole cached blocks.
SHARED_PREFIX = " ".join(
    f"Rule {n}: a paged KV cache stores keys and values in fixed-size blocks, and a prefix cache"
    f" reuses the blocks of an identical prompt prefix." for n in range(1, 7)
)


@dataclass
class LiveRun:
    trace_path: Path
    log_path: Path
    ids: dict[str, str] = field(default_factory=dict)  # label -> the X-Request-Id sent
    texts: dict[str, str] = field(default_factory=dict)
    response_ids: dict[str, str] = field(default_factory=dict)  # label -> the response's id
    pressure_ids: list[str] = field(default_factory=list)

    def trace(self) -> TraceFile:
        return read_trace_file(self.trace_path)

    def shape(self) -> TraceShape:
        return analyse(self.trace().spans)


def run_workload(base_url: str, run: LiveRun, pressure_requests: int = 4, pressure_tokens: int = 160,
                 ignore_eos: bool = True) -> None:
    """ignore_eos: the pressure requests run to max_tokens (vLLM then must preempt); SGLang reserves a
    request's whole max_new_tokens when it ignores EOS and so never over-admits: it gets False."""
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    model = client.models.list().data[0].id

    def header(label: str) -> dict[str, str]:
        run.ids[label] = f"st-{label}"
        return {"x-request-id": run.ids[label]}

    out = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6,
                                    temperature=0, extra_headers=header("completion"))
    run.texts["completion"], run.response_ids["completion"] = out.choices[0].text, out.id
    run.texts["completion-stream"] = "".join(
        chunk.choices[0].text for chunk in client.completions.create(
            model=model, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True,
            extra_headers=header("completion-stream")) if chunk.choices)
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                          max_tokens=6, temperature=0, extra_headers=header("chat"))
    run.texts["chat"], run.response_ids["chat"] = chat.choices[0].message.content or "", chat.id
    run.texts["chat-stream"] = "".join(
        chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=6, temperature=0,
            stream=True, extra_headers=header("chat-stream")) if chunk.choices)
    for label in ("prefix-first", "prefix-second"):
        client.completions.create(model=model, prompt=SHARED_PREFIX + f" Question {label}:", max_tokens=2,
                                  temperature=0, extra_headers=header(label))
    # A stream the client walks away from after two chunks: its trace must end and its KV be freed.
    stream = client.completions.create(model=model, prompt="Count slowly:", max_tokens=200, temperature=0,
                                       stream=True, extra_headers=header("aborted"))
    for index, _ in enumerate(stream):
        if index == 1:
            break
    stream.close()
    # More concurrent long generations than the small KV pool holds: the scheduler must preempt.
    threads = []
    for n in range(pressure_requests):
        label = f"pressure-{n}"
        headers = header(label)
        run.pressure_ids.append(run.ids[label])
        threads.append(threading.Thread(target=client.completions.create, kwargs=dict(
            model=model, prompt=f"Count from {n} to 900, separated by commas: {n},", max_tokens=pressure_tokens,
            temperature=0, extra_body={"ignore_eos": ignore_eos}, extra_headers=headers)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until_written(run.trace_path)


def wait_until_written(trace_path: Path, quiet_s: float = 1.5, timeout_s: float = 30.0) -> None:
    """Return once the trace file has not grown for quiet_s (each process's exporter writes its
    queued spans every 0.5 s, tracer/instrument/otel.py), so that stopping the server next does not
    race those exports: on a busy machine SGLang's scheduler could still be flushing on SIGTERM when
    its launcher SIGKILLs the tree 5 s later (tracer/live/sglang.py), and the last request's kv.free
    was lost. A server that keeps writing is stopped anyway after timeout_s."""
    deadline = time.monotonic() + timeout_s
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_size = trace_path.stat().st_size if trace_path.exists() else 0
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)
