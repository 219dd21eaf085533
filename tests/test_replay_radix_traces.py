"""A radix-cache replay's traces open as requests: each replayed request is one trace, rooted at
its enqueue, holding its own match / evict / insert spans (an eviction sits in the trace of the
request whose admission needed the room). Both trees, ours and SGLang 0.5.23's RadixCache."""
from __future__ import annotations

import pytest

from tracer.replay.config import ReplayConfig
from tracer.replay.session import run_replay
from tracer.replay.workload import WorkloadRequest
from tracer.traces import schema
from tracer.traces.shape import analyse
from tracer.traces.trace_file import read_trace_file
from tracer.tui.loader import load_trace
from tracer.tui.model import build_model
from tracer.tui.timeline import build_waterfall

SYSTEM = list(range(100, 164))
WORKLOAD = [WorkloadRequest(f"r{i}", i, SYSTEM + list(range(1000 * (i + 1), 1000 * (i + 1) + 24)), 8) for i in range(6)]


@pytest.fixture(scope="module")
def radix_traces(tmp_path_factory):
    out = tmp_path_factory.mktemp("radix")
    # 288 token slots with 2 requests in flight: r3 hits the system prompt and must evict a finished request's tail.
    run_replay(WORKLOAD, ReplayConfig(block_size=16, radix_pool_tokens=288, radix_concurrency=2), ["mini", "sglang"], out_dir=out)
    return {name: out / f"trace-{name}.jsonl" for name in ("mini-radix", "sglang")}


@pytest.mark.parametrize("name", ["mini-radix", "sglang"])
def test_each_replayed_request_is_one_trace_with_its_cache_calls(radix_traces, name):
    shape = analyse(read_trace_file(radix_traces[name]).spans)
    assert shape.orphans == {}
    assert sorted(r.root.request_id for r in shape.requests) == [r.id for r in WORKLOAD]
    for request in shape.requests:
        assert {"kv.match_prefix", "kv.insert"} <= request.hops()
    # r1 arrives while r0 is still in flight (not yet in the tree); those after r0 finished hit the system prompt.
    hits = {r.root.request_id: max(s.attributes.get(schema.CACHED_TOKENS, 0) for s in r.spans if s.name == "kv.match_prefix")
            for r in shape.requests}
    assert hits["r0"] == 0 and all(hits[f"r{i}"] >= 64 for i in range(3, 6))


@pytest.mark.parametrize("name", ["mini-radix", "sglang"])
def test_an_eviction_is_in_the_trace_of_the_request_that_needed_the_room(radix_traces, name):
    shape = analyse(read_trace_file(radix_traces[name]).spans)
    evicting = [r for r in shape.requests if any(s.name == "kv.evict" and s.attributes.get(schema.EVICTED, 0) > 0 for s in r.spans)]
    assert evicting, "the small pool must make an admission evict"


def test_the_explorer_lists_them_as_requests_with_their_cached_tokens(radix_traces):
    model = build_model(load_trace(radix_traces["sglang"]))
    requests = list(model.requests.values()) if isinstance(model.requests, dict) else list(model.requests)
    assert sorted(r.request_id for r in requests) == [r.id for r in WORKLOAD]
    assert {r.request_id: r.cached_tokens for r in requests}["r0"] == 0
    assert all(r.cached_tokens >= 64 for r in requests if r.request_id in ("r3", "r4", "r5"))


def test_the_state_panel_reads_each_requests_own_hit_even_a_zero(radix_traces):
    model = build_model(load_trace(radix_traces["sglang"]))
    requests = {r.request_id: r for r in (model.requests.values() if isinstance(model.requests, dict) else model.requests)}
    for rid, expected in (("r0", 0), ("r3", 64)):
        waterfall = build_waterfall(model, requests[rid])
        lookups = [i for i, row in enumerate(waterfall.rows) if row.span.name == "kv.match_prefix"]
        assert waterfall.state_at(lookups[0]).matched_prefix == expected


def test_the_explorer_compare_of_the_sglang_scheduler_replays_agrees_step_by_step(tmp_path):
    """mini-sglang vs SGLang's real Scheduler, opened side by side: SGLang's schedule spans carry
    per-request tokens (extend_lens) and the running count with the new prefill batch in it, and
    requests that were only looked up (the longest-prefix policy matches every waiting one) are not
    part of the batch."""
    from tracer.tui.compare import compare_models

    prompts = [SYSTEM + list(range(1000 * (i + 1), 1000 * (i + 1) + 24)) for i in range(8)]
    workload = [WorkloadRequest(f"s{i}", i // 3, p, 6) for i, p in enumerate(prompts)]
    run_replay(workload, ReplayConfig(block_size=16, max_num_batched_tokens=64), ["mini-sglang", "sglang"], out_dir=tmp_path / "r")
    left, right = (build_model(load_trace(tmp_path / "r" / f"trace-{n}.jsonl")) for n in ("mini-sglang", "sglang-scheduler"))
    comparison = compare_models(left, right)
    text, agree = comparison.verdict("mini-sglang", "sglang")
    assert agree and comparison.compared_steps > 5, text
