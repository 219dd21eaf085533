"""The whole request path traced through the real server: http.request is the root of each
request's trace, and everything the engine does for that request joins it.

The server is the one `servetrace serve --trace FILE` runs (build_app + uvicorn, here in a
background thread), spoken to with the official `openai` client. Nothing in engine/ knows about
tracing: the catalog's hooks on OpenAIServing and the engine produce every span below.
"""
from __future__ import annotations

import json
import socket

import openai
import pytest

from tests.test_server import RunningServer, shared_engine
from tracer.instrument import otel, spans, tracing
from tracer.traces.trace_file import SpanRecord, TraceFile, read_trace_file

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
ENGINE_HOPS = {"request.render", "engine.enqueue", "kv.match_prefix", "kv.allocate", "kv.free"}
CHAT_TOKENS, COMPLETION_TOKENS = 8, 6


def served_model(server: RunningServer) -> str:
    return server.app.state.serving.served_model_name


@pytest.fixture(scope="module")
def traced_exchange(tmp_path_factory):
    """One streaming chat (continuing the caller's trace) and one plain completion, traced to a file."""
    path = tmp_path_factory.mktemp("http") / "trace.jsonl"
    tracing.enable("mini", trace_file=path)
    try:
        server = RunningServer(shared_engine()).start()
        try:
            client, model = server.client(), served_model(server)
            chat_text, chat_id, chat_usage = "", None, None
            for chunk in client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=CHAT_TOKENS,
                temperature=0, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True}, extra_headers={"traceparent": TRACEPARENT},
            ):
                chat_id = chunk.id
                chat_usage = chunk.usage or chat_usage
                chat_text += "".join(choice.delta.content or "" for choice in chunk.choices)
            completion = client.completions.create(
                model=model, prompt="The capital of France is", max_tokens=COMPLETION_TOKENS, temperature=0,
                extra_body={"ignore_eos": True},
            )
            with pytest.raises(openai.NotFoundError):
                client.completions.create(model="no-such-model", prompt="hi", max_tokens=1)
            server.assert_idle_and_pool_free()
        finally:
            server.stop()
        otel.flush()
    finally:
        tracing.disable()
        spans.registry.clear()
    return read_trace_file(path), {"chat": (chat_id, chat_usage), "completion": (completion.id, completion.usage)}


def http_span(trace: TraceFile, request_id: str) -> SpanRecord:
    (span,) = [s for s in trace.named("http.request") if s.request_id == request_id]
    return span


def test_each_request_is_rooted_at_its_http_request(traced_exchange):
    trace, answers = traced_exchange
    assert trace.skipped == []
    chat = http_span(trace, answers["chat"][0])
    completion = http_span(trace, answers["completion"][0])
    assert chat.kind == completion.kind == "SERVER"
    # The caller's traceparent is honoured: the chat continues the caller's trace, under its span.
    assert (chat.trace_id, chat.parent_span_id) == (CALLER_TRACE_ID, CALLER_SPAN_ID)
    # Without one, the HTTP span starts a trace of its own.
    assert completion.parent_span_id is None and completion.trace_id != CALLER_TRACE_ID
    assert chat.attributes.items() >= {
        "http.request.method": "POST", "http.route": "/v1/chat/completions", "http.response.status_code": 200,
        "gen_ai.operation.name": "chat", "servetrace.http.stream": True, "gen_ai.request.max_tokens": CHAT_TOKENS,
    }.items()
    assert completion.attributes.items() >= {
        "http.request.method": "POST", "http.route": "/v1/completions", "http.response.status_code": 200,
        "gen_ai.operation.name": "text_completion", "servetrace.http.stream": False,
        "gen_ai.request.max_tokens": COMPLETION_TOKENS, "gen_ai.usage.output_tokens": COMPLETION_TOKENS,
        "gen_ai.response.finish_reasons": ["length"],
    }.items()
    assert chat.attributes["gen_ai.request.model"] == completion.attributes["gen_ai.request.model"]


def test_the_engine_spans_of_a_request_are_children_of_its_http_span(traced_exchange):
    trace, answers = traced_exchange
    for request_id, usage in answers.values():
        root = http_span(trace, request_id)
        children = [s for s in trace.spans if s.trace_id == root.trace_id and s is not root]
        assert {s.name for s in children} == ENGINE_HOPS
        for child in children:
            assert child.parent_span_id == root.span_id, child.name
            # render runs before the server has named the request; everything after carries its id.
            assert child.request_id == (None if child.name == "request.render" else request_id), child.name
        # Detokenization is once per step for the whole batch: in the step's trace, linked to this request.
        detokenized = [s for s in trace.named("detokenize") if (root.trace_id, root.span_id) in
                       {(link.trace_id, link.span_id) for link in s.links}]
        assert sum(s.attributes["servetrace.batch.num_new_tokens"][s.attributes["servetrace.batch.request_ids"].index(request_id)]
                   for s in detokenized) == usage.completion_tokens
        (free,) = [s for s in children if s.name == "kv.free"]
        assert free.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
        assert free.attributes["gen_ai.response.finish_reasons"] == ["length"]


def test_a_streamed_request_span_lasts_until_its_stream_ends(traced_exchange):
    trace, answers = traced_exchange
    for request_id, _ in answers.values():
        root = http_span(trace, request_id)
        children = [s for s in trace.spans if s.parent_span_id == root.span_id]
        assert root.start_ns <= min(s.start_ns for s in children)
        assert root.end_ns >= max(s.end_ns for s in children)  # the kv.free at the end
        assert "servetrace.stream.closed_early" not in root.attributes


def test_engine_steps_link_to_the_http_span_of_every_request_in_their_batch(traced_exchange):
    trace, answers = traced_exchange
    roots = {request_id: http_span(trace, request_id) for request_id, _ in answers.values()}
    steps_of = {request_id: 0 for request_id in roots}
    for step in trace.named("engine.step"):
        assert step.parent_span_id is None and step.trace_id not in {r.trace_id for r in roots.values()}
        links = {(link.trace_id, link.span_id) for link in step.links}
        for request_id in step.attributes["servetrace.batch.request_ids"]:
            assert (roots[request_id].trace_id, roots[request_id].span_id) in links
            steps_of[request_id] += 1
    # ignore_eos: one prefill step and then a step per further token.
    assert steps_of == {answers["chat"][0]: CHAT_TOKENS, answers["completion"][0]: COMPLETION_TOKENS}


def test_a_refused_request_is_an_http_span_with_the_error(traced_exchange):
    trace, answers = traced_exchange
    answered = {request_id for request_id, _ in answers.values()}
    (refused,) = [s for s in trace.named("http.request") if s.request_id not in answered]
    assert refused.status == "ERROR" and "no-such-model" in refused.status_message
    assert refused.attributes["http.response.status_code"] == 404
    assert refused.parent_span_id is None
    assert [s.name for s in trace.spans if s.trace_id == refused.trace_id] == ["http.request"]


def test_a_client_that_leaves_mid_stream_ends_the_span(tmp_path):
    path = tmp_path / "trace.jsonl"
    tracing.enable("mini", trace_file=path)
    try:
        server = RunningServer(shared_engine()).start()
        try:
            stream = server.client().completions.create(
                model=served_model(server), prompt="Tell me a story.", max_tokens=400, temperature=0, stream=True,
                extra_body={"ignore_eos": True},
            )
            next(iter(stream))
            stream.close()
            server.assert_idle_and_pool_free()
        finally:
            server.stop()
        otel.flush()
    finally:
        tracing.disable()
        spans.registry.clear()
    trace = read_trace_file(path)
    (root,) = trace.named("http.request")
    assert root.attributes["servetrace.stream.closed_early"] is True and root.status != "ERROR"
    (free,) = [s for s in trace.named("kv.free") if s.trace_id == root.trace_id]
    assert free.parent_span_id == root.span_id and free.attributes["servetrace.request.status"] == "FINISHED_ABORTED"
    linked_to_root = [s for s in trace.named("detokenize") if root.span_id in {link.span_id for link in s.links}]
    assert linked_to_root and root.end_ns >= min(s.end_ns for s in linked_to_root)


def test_an_unreachable_otlp_collector_never_breaks_serving(tmp_path, caplog):
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        dead_endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    path = tmp_path / "trace.jsonl"
    tracing.enable("mini", trace_file=path, otlp_endpoint=dead_endpoint)
    try:
        server = RunningServer(shared_engine()).start()
        try:
            client, model = server.client(), served_model(server)
            for _ in range(2):  # the second comes after the first export has failed
                streamed = "".join(
                    chunk.choices[0].text
                    for chunk in client.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0,
                                                           stream=True, extra_body={"ignore_eos": True})
                    if chunk.choices
                )
                plain = client.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0,
                                                  extra_body={"ignore_eos": True})
                assert streamed == plain.choices[0].text and plain.usage.completion_tokens == 3
                otel.flush()
            server.assert_idle_and_pool_free()
        finally:
            server.stop()
    finally:
        tracing.disable()
        spans.registry.clear()
    # The file exporter beside the dead collector got every request.
    assert len(read_trace_file(path).named("http.request")) == 4
    # ... and the collector was really tried (the OTLP exporter logs its refusals itself).
    assert "Connection refused" in caplog.text


def test_a_server_trace_exports_to_perfetto_with_a_track_per_request(traced_exchange, tmp_path):
    from tracer.cli import main

    trace, answers = traced_exchange
    out = tmp_path / "trace.perfetto.json"
    assert main(["export", trace.path, "--format", "perfetto", "-o", str(out)]) == 0
    events = json.loads(out.read_text())["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    slices = [e for e in events if e["ph"] == "X"]
    for request_id, _ in answers.values():
        (root,) = [e for e in slices if e["name"] == "http.request" and e["args"].get("gen_ai.request.id") == request_id]
        assert threads[root["tid"]] == f"request {request_id}"
        track = [e for e in slices if e["tid"] == root["tid"] and e is not root]
        # The request's track holds its engine-side spans, all inside the HTTP slice.
        assert {e["name"] for e in track} == ENGINE_HOPS
        assert all(root["ts"] <= e["ts"] and e["ts"] + e["dur"] <= root["ts"] + root["dur"] + 1 for e in track)
    # Steps draw an arrow from each request they served.
    arrows = [e for e in events if e["ph"] == "f" and e["name"] == "request"]
    assert {threads[e["tid"]] for e in arrows} == {"engine"}
