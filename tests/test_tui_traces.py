"""Real traces for the explorer's tests, recorded once per test session, and the fast loader
held equal to the reference reader (tracer.traces.trace_file) on them.

- an offline generate of two requests sharing a prefix on our engine (bundled model), traced
  by the catalog hooks: render / enqueue roots, engine steps down to model.forward;
- `servetrace replay` of a small shared-prefix workload through our scheduler and vLLM's;
- the same workload through vLLM with prefix caching off: a real divergence to compare.

`normalised` rewrites ids and times by order of appearance, so snapshots are stable while
every span, attribute, link and the nesting/ordering of times stay those recorded.
"""
from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tracer.traces.trace_file import read_trace_file
from tracer.tui.loader import ints_of, load_trace
from tracer.tui.records import as_record

SYSTEM = "You are a careful assistant who answers questions about cooking, briefly and precisely. " * 3
PROMPTS = [SYSTEM + "How long should I boil an egg?", SYSTEM + "What is the best oil for frying?"]
MAX_TOKENS = 4
BLOCK_SIZE = 16


@cache
def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="servetrace-tui-"))


@dataclass(frozen=True)
class EngineRun:
    trace: Path
    request_ids: tuple[str, ...]
    prompt_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    cached_tokens: tuple[int, ...]


@cache
def engine_run() -> EngineRun:
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from tracer.instrument import tracing

    engine = LLMEngine(EngineConfig(
        cache=CacheConfig(block_size=BLOCK_SIZE, num_blocks=64, enable_prefix_caching=True),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256),
    ))
    path = _workdir() / "engine-raw.jsonl"
    # One line per span (no batching): how many lines the file has must not depend on how fast the
    # engine ran, since the malformed / truncated file tests cut its last lines.
    with tracing.traced("mini", path, batch=False):
        outputs = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True))
    return EngineRun(
        trace=normalised(path, _workdir() / "engine.jsonl"),
        request_ids=tuple(o.request_id for o in outputs),
        prompt_tokens=tuple(len(o.prompt_token_ids) for o in outputs),
        output_tokens=tuple(len(o.output_token_ids) for o in outputs),
        cached_tokens=tuple(o.num_cached_tokens for o in outputs),
    )


@dataclass(frozen=True)
class ReplayRun:
    mini: Path
    vllm: Path
    vllm_no_prefix_cache: Path
    workload: tuple  # the WorkloadRequests
    divergence_step_index: int | None  # tracer.replay's own verdict, mini vs uncached vLLM


@cache
def replay_run() -> ReplayRun:
    from tracer.replay.compare import compare_logs
    from tracer.replay.config import ReplayConfig
    from tracer.replay.session import run_replay
    from tracer.replay.workload import generate

    workload = generate("shared-prefix", num_requests=5, seed=3)
    config = ReplayConfig(num_blocks=64, max_num_seqs=8, max_num_batched_tokens=128)
    both = run_replay(workload, config, ["mini", "vllm"], _workdir() / "replay")
    uncached_config = ReplayConfig(num_blocks=64, max_num_seqs=8, max_num_batched_tokens=128, enable_prefix_caching=False)
    uncached = run_replay(workload, uncached_config, ["vllm"], _workdir() / "replay-uncached")
    divergence = compare_logs(both.logs["mini"], uncached.logs["vllm"]).divergence
    return ReplayRun(
        mini=normalised(_workdir() / "replay" / "trace-mini.jsonl", _workdir() / "replay-mini.jsonl"),
        vllm=normalised(_workdir() / "replay" / "trace-vllm.jsonl", _workdir() / "replay-vllm.jsonl"),
        vllm_no_prefix_cache=normalised(_workdir() / "replay-uncached" / "trace-vllm.jsonl", _workdir() / "replay-vllm-uncached.jsonl"),
        workload=tuple(workload),
        divergence_step_index=None if divergence is None else divergence.step_index,
    )


@dataclass(frozen=True)
class HttpRun:
    trace: Path
    chat_id: str
    completion_id: str
    refused_model: str


@cache
def http_run() -> HttpRun:
    """Our server (build_app + uvicorn, as `servetrace serve` runs it) traced by the catalog hooks:
    one chat, one completion, and one request for a model it does not serve (a 404 with its message)."""
    import openai

    from tests.test_server import RunningServer, shared_engine
    from tracer.instrument import tracing

    path = _workdir() / "http-raw.jsonl"
    refused = "no-such-model-of-a-rather-long-name"
    with tracing.traced("mini", path, service_name="servetrace-mini"):  # as `servetrace serve --trace` names it
        server = RunningServer(shared_engine()).start()
        try:
            client, model = server.client(), server.app.state.serving.served_model_name
            chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a colour."}],
                                                  max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True})
            completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=MAX_TOKENS,
                                                   temperature=0, extra_body={"ignore_eos": True})
            with pytest.raises(openai.NotFoundError):
                client.completions.create(model=refused, prompt="hi", max_tokens=1)
        finally:
            server.stop()
    return HttpRun(normalised(path, _workdir() / "http.jsonl"), chat.id, completion.id, refused)


def normalised(source: Path, target: Path) -> Path:
    """A copy of an OTLP/JSON-lines file with ids numbered by first appearance, times replaced by
    their rank among all the file's timestamps (1 ms apart), and per-process resource attributes dropped."""
    messages = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    spans = [span for m in messages for rs in m["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]]
    times = sorted({int(t) for s in spans for t in (s["startTimeUnixNano"], s["endTimeUnixNano"])}
                   | {int(e["timeUnixNano"]) for s in spans for e in s.get("events", [])})
    rank = {t: str(1_700_000_000_000_000_000 + i * 1_000_000) for i, t in enumerate(times)}
    ids: dict[str, str] = {}

    def renumber(value: str, width: int) -> str:
        return ids.setdefault(value, format(len(ids) + 1, f"0{width}x"))

    for span in spans:
        span["traceId"] = renumber(span["traceId"], 32)
        span["spanId"] = renumber(span["spanId"], 16)
        if span.get("parentSpanId"):
            span["parentSpanId"] = renumber(span["parentSpanId"], 16)
        for link in span.get("links", []):
            link["traceId"], link["spanId"] = renumber(link["traceId"], 32), renumber(link["spanId"], 16)
        span["startTimeUnixNano"], span["endTimeUnixNano"] = rank[int(span["startTimeUnixNano"])], rank[int(span["endTimeUnixNano"])]
        for event in span.get("events", []):
            event["timeUnixNano"] = rank[int(event["timeUnixNano"])]
    for message in messages:
        for resource_spans in message["resourceSpans"]:
            attributes = resource_spans.get("resource", {}).get("attributes", [])
            resource_spans["resource"]["attributes"] = [
                a for a in attributes if a["key"] not in ("process.pid", "service.instance.id", "telemetry.sdk.version")]
    target.write_text("".join(json.dumps(m) + "\n" for m in messages))
    return target


def test_the_fast_loader_reads_what_the_reference_reader_reads():
    for path in (engine_run().trace, replay_run().mini, replay_run().vllm):
        fast, reference = load_trace(path), read_trace_file(path)
        key = lambda s: s.span_id  # noqa: E731
        assert sorted(map(as_record, fast.spans), key=key) == sorted(reference.spans, key=key)
        assert fast.skipped == reference.skipped == []


def test_the_fast_loader_falls_back_on_lines_outside_its_schema(tmp_path):
    """Protobuf's JSON mapping writes ids in base64: the reference reader's path takes that line."""
    line = json.loads(engine_run().trace.read_text().splitlines()[0])
    for rs in line["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                span["spanId"] = base64.b64encode(bytes.fromhex(span["spanId"])).decode()
                span.pop("parentSpanId", None)
    path = tmp_path / "base64.jsonl"
    path.write_text(json.dumps(line) + "\n" + "not json\n" + '{"no": "spans"}\n')
    fast, reference = load_trace(path), read_trace_file(path)
    key = lambda s: s.span_id  # noqa: E731
    assert len(fast.spans) > 0
    assert sorted(map(as_record, fast.spans), key=key) == sorted(reference.spans, key=key)
    assert [s.line_number for s in fast.skipped] == [s.line_number for s in reference.skipped] == [2, 3]


def test_an_attribute_value_outside_the_schema_reads_as_the_reference_reader_reads_it(tmp_path):
    """Attribute values are decoded only when read; one the typed schema does not fit (a bool
    written as a string) still comes back as the reference reader's value, not an error."""
    line = json.loads(engine_run().trace.read_text().splitlines()[0])
    span = line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"].append({"key": "test.flag", "value": {"boolValue": "true"}})
    path = tmp_path / "odd-value.jsonl"
    path.write_text(json.dumps(line) + "\n")
    fast, reference = load_trace(path), read_trace_file(path)
    fast_span = next(s for s in fast.spans if s.span_id == span["spanId"])
    assert fast_span.attributes["test.flag"] is True
    assert dict(fast_span.attributes) == next(s for s in reference.spans if s.span_id == span["spanId"]).attributes


def test_ids_the_reference_reader_rewrites_read_the_same_and_blank_lines_are_ignored(tmp_path):
    """Upper-case hex ids (a span's, a parent's, a link's) leave the fast path for the
    reference reader's, which lower-cases them; blank lines are neither spans nor errors."""
    lines = engine_run().trace.read_text().splitlines()
    line = json.loads(next(text for text in lines if '"links"' in text))
    for rs in line["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                span["traceId"] = span["traceId"].upper()
                for link in span.get("links", []):
                    link["spanId"] = link["spanId"].upper()
    path = tmp_path / "upper.jsonl"
    path.write_text("\n   \n" + json.dumps(line) + "\n\n" + lines[0] + "\n")
    fast, reference = load_trace(path), read_trace_file(path)
    key = lambda s: (s.trace_id, s.span_id)  # noqa: E731
    assert any(s.links for s in reference.spans)
    assert sorted(map(as_record, fast.spans), key=key) == sorted(reference.spans, key=key)
    assert fast.skipped == reference.skipped == []


@pytest.mark.parametrize("times", [["1796098753592799652", "0"], [" 12", "0012", "-0", "+1"], ["١٢٣"],
                                   ["99999999999999999999999"], [5, "6"], ["1e3"], ["1.0"], ["1,2"], ["true"], []])
def test_times_read_in_bulk_are_what_int_makes_of_each(times):
    """The loader reads a line's times as one JSON array: any time that is not a plain string of
    digits (an exponent, a comma, a digit JSON does not know) reads as int() reads it, or fails as it does."""
    try:
        expected = [int(t) for t in times]
    except ValueError:
        with pytest.raises(ValueError):
            ints_of(times)
        return
    assert ints_of(times) == expected
