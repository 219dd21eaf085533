"""A real SGLang server (SGLang 0.5.23 on the CPU, 3 processes: HTTP + TokenizerManager, Scheduler,
DetokenizerManager), traced by servetrace's plugin, driven by the official openai client: one
request is one trace, across every process, down to the forward pass. Started once for the module,
with a 300-token KV pool and a low new-token ratio, so that decoding must retract a request.

The CPU path needs one sgl_kernel op that no registry package ships: `make setup` installs a
clearly named stand-in for it (scripts/sgl_kernel_cpu_standin/) into .venv-sglang only."""
from __future__ import annotations

import pytest

from tests.live_workload import LiveRun, run_workload
from tracer.catalog.hops import load_catalog
from tracer.traces.explain_cache import explain_cache
from tracer.traces.explain_time import split_time
from tracer.traces.request_steps import read_timeline
from tracer.live.sglang import SglangOptions, sglang_server
from tracer.traces import schema

POOL_TOKENS = 300
LIVE_SGLANG_HOPS = {
    "server.startup", "http.request", "request.render", "engine.enqueue", "engine.step", "scheduler.schedule",
    "kv.match_prefix", "kv.allocate", "kv.insert", "scheduler.preempt", "model.execute", "model.forward",
    "sampler.sample", "scheduler.update", "kv.free", "detokenize",
    # resolve_forward_inputs: the FutureMap is always on in 0.5.23, so the normal loop (overlap is off on
    # the CPU) gathers a decode batch's inputs from it too.
    "overlap.placeholders",
}


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> LiveRun:
    folder = tmp_path_factory.mktemp("live-sglang")
    run = LiveRun(trace_path=folder / "trace.jsonl", log_path=folder / "server.log")
    # A low ratio admits more decodes than the pool can finish, so one is retracted (SGLang's 0.7
    # reserves enough that it never happens with this load).
    options = SglangOptions(trace_file=run.trace_path, log_path=run.log_path, max_total_tokens=POOL_TOKENS,
                            init_new_token_ratio=0.1, max_running_requests=8)
    with sglang_server(options) as server:
        run_workload(server.base_url, run, pressure_requests=6, pressure_tokens=100, ignore_eos=False)
    return run


def test_the_plugin_says_in_each_process_that_it_traces(live):
    lines = [line for line in live.log_path.read_text().splitlines() if "servetrace: sglang (sglang 0.5.23, pinned) hooks installed" in line]
    assert len(lines) == 3, lines  # HTTP + TokenizerManager, Scheduler, DetokenizerManager
    assert all(f"tracing to {live.trace_path}" in line and "0 failed" in line for line in lines)
    # Each process names its role on its spans' resource (the explorer labels each hop by it).
    roles = {span.resource.get(schema.PROCESS_ROLE) for span in live.trace().spans}
    assert roles == {"tokenizer_manager", "scheduler", "detokenizer"}, roles


def test_every_trace_is_a_request_a_step_or_the_startup(live):
    shape = live.shape()
    assert not shape.orphans, shape.describe_orphans()
    assert len(shape.startup) == 1
    assert {r.root.name for r in shape.requests} <= {"http.request", "request.render"}  # + SGLang's own warm-up
    assert len([r for r in shape.requests if r.root.name == "http.request"]) == len(live.ids)


def test_each_request_is_one_trace_rooted_at_http_request_for_both_routes_streamed_or_not(live):
    shape = live.shape()
    for label in ("completion", "completion-stream", "chat", "chat-stream"):
        (request,) = shape.request_with_id(live.ids[label])
        assert request.root.name == "http.request" and request.root.kind == "SERVER"
        pids = {span.resource["process.pid"] for span in request.spans}
        assert len(pids) == 2, f"{label}: the TokenizerManager's and the Scheduler's spans join the request"
        assert {"request.render", "engine.enqueue", "kv.match_prefix", "kv.allocate", "kv.free"} <= request.hops()


def test_the_request_id_is_sglangs_rid_and_the_clients_header_is_kept(live):
    shape = live.shape()
    for label in ("completion", "chat"):
        (request,) = shape.request_with_id(live.ids[label])
        assert request.root.attributes[schema.REQUEST_ID] == live.response_ids[label]  # SGLang ignores X-Request-Id
        assert request.root.attributes[schema.HTTP_REQUEST_ID_HEADER] == live.ids[label]
        scheduler_enqueue = [s for s in request.spans if s.name == "engine.enqueue" and s.parent_span_id
                             and s.resource["process.pid"] != request.root.resource["process.pid"]]
        assert scheduler_enqueue and scheduler_enqueue[0].attributes[schema.REQUEST_ID] == live.response_ids[label]


def test_every_request_is_linked_from_its_steps_and_its_detokenize_which_reach_the_forward_pass(live):
    shape = live.shape()
    for request in shape.requests:
        step_spans = shape.step_spans_of(request)
        assert any(s.name == "model.forward" for s in step_spans), f"{request.root.request_id}: no forward pass"
        assert any(s.name == "detokenize" for s in step_spans), f"{request.root.request_id}: no detokenize"
        pids = {s.resource["process.pid"] for s in step_spans}
        assert len(pids) == 2  # the scheduler's steps and the detokenizer's batches


def test_a_shared_prefix_request_finds_cached_tokens(live):
    shape = live.shape()

    def cached(label):
        (request,) = shape.request_with_id(live.ids[label])
        return max(s.attributes.get(schema.CACHED_TOKENS, 0) for s in request.spans if s.name == "kv.match_prefix")

    assert cached("prefix-first") < 10
    assert cached("prefix-second") >= 150  # the radix tree matches the shared prompt token by token


def test_an_aborted_stream_ends_its_trace_and_frees_its_kv(live):
    (request,) = live.shape().request_with_id(live.ids["aborted"])
    assert request.root.attributes.get(schema.STREAM_CLOSED_EARLY) is True
    assert "kv.free" in request.hops()


def test_the_small_pool_forces_a_retraction_that_shows_in_the_retracted_request(live):
    assert "Retract requests" in live.log_path.read_text()
    shape = live.shape()
    retracted = [r for r in shape.requests if "scheduler.preempt" in r.hops()]
    assert retracted, "no request trace holds a scheduler.preempt span"
    for request in retracted:
        assert request.root.attributes[schema.HTTP_REQUEST_ID_HEADER] in live.pressure_ids
        preempt = next(s for s in request.spans if s.name == "scheduler.preempt")
        assert preempt.attributes[schema.STATUS] == "RETRACTED"
        # Its KV is released at the retraction (no finish yet) and again when it finishes.
        assert len([s for s in request.spans if s.name == "kv.free"]) >= 2


def test_every_catalog_hop_a_live_cpu_server_runs_is_in_the_trace(live):
    catalog = load_catalog()
    assert LIVE_SGLANG_HOPS <= {hop.name for hop in catalog.hops if any(t.live for t in hop.targets["sglang"])}
    assert LIVE_SGLANG_HOPS <= {span.name for span in live.trace().spans}


def test_a_decode_batch_takes_its_input_ids_from_the_future_map_inside_its_step(live):
    # overlap.placeholders (resolve_forward_inputs) runs in run_batch before the forward: a prefill
    # copies its staged prompt ids, a decode gathers the tokens the batch before sampled. The
    # overlap loop would run the same call while that batch is still on the device; here it has ended.
    trace = live.trace()
    by_id = {span.span_id: span for span in trace.spans}
    resolves = trace.named("overlap.placeholders")
    assert resolves
    modes = set()
    for span in resolves:
        assert by_id[span.parent_span_id].name == "engine.step"  # Scheduler.run_batch
        mode = span.attributes[schema.FORWARD_MODE]
        modes.add(mode)
        assert span.attributes[schema.FROM_FUTURE] == (mode == "DECODE"), (mode, span.attributes)
    assert {"EXTEND", "DECODE"} <= modes, modes


def test_the_startup_trace_records_what_a_replay_needs(live):
    (startup,) = live.shape().startup
    attributes = startup[0].attributes
    assert attributes[schema.CONFIG_MAX_TOTAL_TOKENS] == POOL_TOKENS
    assert attributes[schema.CONFIG_BLOCK_SIZE] == 1
    assert attributes[schema.CONFIG_MAX_NUM_SEQS] == 8
    assert attributes[schema.CONFIG_PREFIX_CACHING] is True


def test_explain_reads_the_live_trace_its_misses_waits_and_retraction(live):
    """`servetrace explain` on the live server's trace: the causes come from the PrefillAdder state the
    scheduler process's schedule spans recorded, the cache reasons from the radix lookups' prefix hashes."""
    timeline = read_timeline(live.trace().spans)
    assert timeline.engine == "sglang"
    first, second = (timeline.find(live.ids[label]) for label in ("prefix-first", "prefix-second"))
    assert explain_cache(timeline, first).reason == "never-cached"  # the trace holds the startup: nothing ran before
    again = explain_cache(timeline, second)
    # Page size 1: the radix tree matches the shared prompt token by token, up to where the questions part.
    assert again.reason == "token-differs" and again.cached_tokens >= 150 and again.details["other"] == first.name, again.evidence
    splits = {life.name: split_time(timeline, life) for life in timeline.requests}
    assert all(split.residual_ms <= 0.01 * split.wall_ms for split in splits.values())
    retracted = [life for life in timeline.requests if life.preemptions]
    assert retracted and all(splits[life.name].parts.get("preempted", 0) > 0 for life in retracted)
    causes = {note.what for split in splits.values() for note in split.steps if note.what.startswith(("waiting:", "preempted:"))}
    assert causes and not any(cause.endswith(("unrecorded", "not-offered")) for cause in causes), causes
