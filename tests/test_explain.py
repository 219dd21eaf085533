"""`servetrace explain`: every prefix-cache miss gets a reason with evidence, and every moment of a
request's wall time a cause, read from the trace alone.

Each scenario is planted in a workload replayed through our scheduler AND vLLM 0.33's real
Scheduler (in-process, forced outputs, traced by the same hooks), and both traces must give the
same explanation.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.replay.config import ReplayConfig
from tracer.replay.session import run_replay
from tracer.replay.workload import WorkloadRequest
from tracer.traces.explain_cache import REASONS, explain_cache
from tracer.traces.explain_time import split_time
from tracer.traces.request_steps import read_timeline
from tracer.traces.trace_file import read_trace_file

ENGINES = ("mini", "vllm")
BLOCK = 16
BASE = list(range(1000, 1040))  # 40 tokens: two full blocks and 8 more


def replay(tmp_path, requests: list[WorkloadRequest], **config) -> dict:
    out = tmp_path / "replay"
    result = run_replay(requests, ReplayConfig(block_size=BLOCK, **config), list(ENGINES), out_dir=out)
    assert all(not log.stalled for log in result.logs.values())
    return {engine: read_timeline(read_trace_file(out / f"trace-{engine}.jsonl").spans) for engine in ENGINES}


def request(rid: str, step: int, tokens: list[int], max_tokens: int = 4, priority: int = 0) -> WorkloadRequest:
    return WorkloadRequest(rid, step, tokens, max_tokens, priority)


def reasons(timelines: dict) -> dict[str, dict[str, str]]:
    return {engine: {life.name: explain_cache(t, life).reason for life in t.requests} for engine, t in timelines.items()}


@pytest.fixture(scope="module")
def cache_scenarios(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("SERVETRACE_CAPTURE_CONTENT", "1")  # token-differs names the token
    changed = BASE.copy()
    changed[20] = 7
    return replay(tmp_path_factory.mktemp("cache"), [
        request("first", 0, BASE),
        request("again", 10, BASE),  # 2 full blocks hit, 8 tokens in no block
        request("exact", 12, BASE[:32]),  # 2 full blocks: the last one is recomputed
        request("differs", 14, changed),  # block 1 differs at token 20
        request("twin-a", 20, list(range(5000, 5040))),
        request("twin-b", 20, list(range(5000, 5040))),  # same step, after twin-a: its blocks are cached at allocation
    ], num_blocks=64, max_num_batched_tokens=256)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("engine", ENGINES)
def test_each_planted_cache_reason_is_named_in_both_engines(cache_scenarios, engine):
    assert reasons(cache_scenarios)[engine] == {
        "first": "never-cached", "again": "partial-block", "exact": "last-token-recompute",
        "differs": "token-differs", "twin-a": "never-cached", "twin-b": "partial-block",
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_the_evidence_names_the_block_the_position_and_the_tokens(cache_scenarios, engine):
    timeline = cache_scenarios[engine]
    differs = explain_cache(timeline, timeline.find("differs"))
    assert differs.details == {"block": 1, "position": 20, "token": 7, "other_token": 1020, "other": "first"}
    assert differs.cached_tokens == BLOCK and differs.uncached_tokens == 40 - BLOCK
    assert [b["hit"] for b in differs.blocks] == [True, False]
    exact = explain_cache(timeline, timeline.find("exact"))
    assert exact.cached_tokens == BLOCK and exact.details == {"block": 1}
    assert explain_cache(timeline, timeline.find("again")).est_prefill_ms is not None


def test_every_reason_code_is_documented():
    codes = {"never-cached", "partial-block", "last-token-recompute", "token-differs", "still-computing",
             "evicted", "caching-disabled", "not-in-trace", "salt-or-adapter"}
    assert codes <= set(REASONS)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_block_the_earlier_request_has_not_reached_yet_is_still_computing(tmp_path, engine):
    # long_prefill_token_threshold 16: "ahead" prefills one block per step, so when "behind"
    # arrives a step later only ahead's first blocks are allocated (and so cached).
    # (the threshold applies only while more than one request is in the engine: "other" is there too)
    prompt = list(range(6000, 6100))
    timelines = replay(tmp_path, [request("ahead", 0, prompt), request("other", 0, [5] * 8), request("behind", 1, prompt)],
                       long_prefill_token_threshold=16)
    timeline = timelines[engine]
    behind = explain_cache(timeline, timeline.find("behind"))
    assert behind.reason == "still-computing", behind.evidence
    assert behind.details["computing"] == "ahead" and 0 < behind.cached_tokens < 96


@pytest.mark.parametrize("engine", ENGINES)
def test_an_evicted_block_names_who_cached_it_and_whose_allocation_evicted_it(tmp_path, engine):
    # 9 blocks (8 usable): "old" caches 3 blocks and finishes; three 3-block prompts then take the
    # free queue's front, which holds old's blocks once the never-used ones are gone.
    old = list(range(2000, 2048))
    fillers = [list(range(3000 + 100 * i, 3048 + 100 * i)) for i in range(3)]
    timelines = replay(tmp_path, [request("old", 0, old, max_tokens=2)]
                       + [request(f"fill{i}", 6 + 6 * i, tokens, max_tokens=2) for i, tokens in enumerate(fillers)]
                       + [request("back", 40, old, max_tokens=2)], num_blocks=9, max_num_batched_tokens=64)
    timeline = timelines[engine]
    back = explain_cache(timeline, timeline.find("back"))
    assert back.reason == "evicted", back.evidence
    assert back.details["cached_by"] == "old"
    assert back.details["evicted_by"].startswith("fill")
    assert timeline.evictions, "kv.evict spans carry the evicted hashes"


@pytest.mark.parametrize("engine", ENGINES)
def test_caching_off_is_the_reason_when_the_pool_does_not_cache(tmp_path, engine):
    timelines = replay(tmp_path, [request("a", 0, BASE), request("b", 10, BASE)], enable_prefix_caching=False)
    assert reasons(timelines)[engine] == {"a": "caching-disabled", "b": "caching-disabled"}


@pytest.mark.parametrize("engine", ENGINES)
def test_waiting_causes_are_read_off_the_scheduler_state_of_each_step(tmp_path, engine):
    timelines = replay(tmp_path, [request("a", 0, BASE), request("b", 0, BASE[::-1])], max_num_seqs=1)
    split = split_time(timelines[engine], timelines[engine].find("b"))
    waits = {n.what for n in split.steps if n.what.startswith("waiting")}
    assert waits == {"waiting: max-num-seqs"}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("config, cause", [
    ({"max_num_batched_tokens": 40}, "token-budget"),  # a's 40-token prompt uses it all
    ({"max_num_batched_tokens": 64, "enable_chunked_prefill": False, "max_model_len": 64}, "token-budget"),
    ({"num_blocks": 5}, "kv-blocks"),  # a holds 3 of the 4 usable blocks; b needs 3
])
def test_budget_and_blocks_hold_a_request_back(tmp_path, engine, config, cause):
    timelines = replay(tmp_path, [request("a", 0, BASE, max_tokens=6), request("b", 0, list(range(7000, 7040)), max_tokens=2)], **config)
    split = split_time(timelines[engine], timelines[engine].find("b"))
    assert f"waiting: {cause}" in {n.what for n in split.steps}, [vars(n) for n in split.steps]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_higher_priority_head_is_the_cause_under_the_priority_policy(tmp_path, engine):
    timelines = replay(tmp_path, [request("run", 0, BASE, max_tokens=8), request("urgent", 1, list(range(7000, 7040)), priority=0),
                                  request("later", 1, list(range(8000, 8040)), priority=5)],
                       max_num_seqs=1, policy="priority")
    split = split_time(timelines[engine], timelines[engine].find("later"))
    assert "waiting: priority" in {n.what for n in split.steps}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_preempted_request_counts_its_preempted_time_with_the_cause_of_each_step(tmp_path, engine):
    # 7 usable blocks cannot hold three 3-block requests decoding past their third block.
    prompts = [list(range(100 * i, 100 * i + 40)) for i in range(3)]
    timelines = replay(tmp_path, [request(f"r{i}", 0, p, max_tokens=12) for i, p in enumerate(prompts)],
                       num_blocks=8, max_num_batched_tokens=256)
    timeline = timelines[engine]
    preempted = [life for life in timeline.requests if life.preemptions]
    assert preempted, "the pool must force a preemption"
    split = split_time(timeline, preempted[0])
    assert split.parts.get("preempted", 0) > 0
    # It is preempted as it crosses into a new block, so its full blocks stay cached and its
    # resume recomputes nothing; meanwhile the pool is full.
    assert {n.what for n in split.steps if n.what.startswith("preempted")} == {"preempted: kv-blocks"}
    assert "recompute" not in split.parts


@pytest.mark.parametrize("engine", ENGINES)
def test_the_causes_add_up_to_the_wall_time_with_no_residual(cache_scenarios, engine):
    timeline = cache_scenarios[engine]
    for life in timeline.requests:
        split = split_time(timeline, life)
        assert sum(split.parts.values()) + split.residual_ms == pytest.approx(split.wall_ms, rel=1e-6, abs=1e-6)
        assert split.residual_ms <= 0.01 * split.wall_ms


def test_the_command_prints_both_and_json_and_names_a_missing_request(tmp_path, cache_scenarios):
    run_replay([request("first", 0, BASE), request("again", 10, BASE)], ReplayConfig(block_size=BLOCK), ["mini"], out_dir=tmp_path / "r")
    trace = tmp_path / "r" / "trace-mini.jsonl"
    cli = [str(Path(sys.executable).parent / "servetrace"), "explain", str(trace)]
    text = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert "partial-block" in text and "where the time went" in text
    data = json.loads(subprocess.run(cli + ["--json", "--request", "again"], capture_output=True, text=True, check=True).stdout)
    assert [d["cache"]["reason"] for d in data] == ["partial-block"]
    missing = subprocess.run(cli + ["--request", "nope"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no request 'nope'" in missing.stderr


def test_an_sglang_trace_from_before_the_admission_state_says_what_it_lacks():
    """tests/data/live-sglang.jsonl predates the PrefillAdder state and the radix prefix hashes."""
    timeline = read_timeline(read_trace_file("tests/data/live-sglang.jsonl").spans)
    assert timeline.engine == "sglang" and timeline.requests
    for life in timeline.requests:
        split = split_time(timeline, life)
        assert split.residual_ms <= 0.01 * split.wall_ms
        assert all(n.what.endswith("unrecorded") for n in split.steps if n.what.startswith(("waiting", "preempted")))
        assert explain_cache(timeline, life).reason in ("no-block-hashes", "last-token-recompute", "caching-disabled")


def test_a_live_vllm_trace_from_before_the_scheduler_state_says_its_causes_are_unrecorded():
    timeline = read_timeline(read_trace_file("tests/data/live-vllm.jsonl").spans)
    for life in timeline.requests:
        split = split_time(timeline, life)
        assert split.residual_ms <= 0.01 * split.wall_ms
        assert all(n.what.endswith("unrecorded") for n in split.steps if n.what.startswith(("waiting", "preempted")))
    short = explain_cache(timeline, timeline.find("cmpl-sample-stream-0"))
    assert short.reason == "partial-block" and "fill no 128-token block" in short.evidence


@pytest.mark.parametrize("engine", ENGINES)
def test_a_hit_on_work_from_before_the_trace_began_is_not_in_trace(tmp_path, engine):
    """The trace window opens after "early" ran (as a live trace joined late would): "late" hits
    blocks that no request in the trace computed."""
    out = tmp_path / "replay"
    late_prompt = BASE[:32] + list(range(7000, 7024))  # early's first two blocks, then its own
    run_replay([request("early", 0, BASE, max_tokens=2), request("late", 10, late_prompt, max_tokens=2)],
               ReplayConfig(block_size=BLOCK), [engine], out_dir=out)
    spans = read_trace_file(out / f"trace-{engine}.jsonl").spans
    full = read_timeline(spans)
    opens = full.find("late").start_ns
    timeline = read_timeline([s for s in spans if s.start_ns >= opens])
    assert [life.name for life in timeline.requests] == ["late"]
    late = explain_cache(timeline, timeline.find("late"))
    assert late.reason == "not-in-trace" and late.cached_tokens == 2 * BLOCK, late.evidence


@pytest.mark.parametrize("engine", ENGINES)
def test_a_step_that_preempted_admits_nobody_and_says_so(tmp_path, engine):
    # Three 3-block requests decode past their third block in 7 usable blocks; "late" waits for
    # blocks, and in the step that preempts one of the three it is not even tried (scheduler.py:1050).
    prompts = [list(range(100 * i, 100 * i + 40)) for i in range(3)]
    timelines = replay(tmp_path, [request(f"r{i}", 0, p, max_tokens=12) for i, p in enumerate(prompts)]
                       + [request("late", 1, list(range(900, 940)), max_tokens=2)], num_blocks=8, max_num_batched_tokens=256)
    timeline = timelines[engine]
    notes = split_time(timeline, timeline.find("late")).steps
    preempting = [n for n in notes if n.what == "waiting: preemption"]
    assert preempting and {n.what for n in notes if n.what.startswith("waiting")} == {"waiting: kv-blocks", "waiting: preemption"}
    step = timeline.steps[preempting[0].step]
    assert step.attr("servetrace.batch.preempted_request_ids") and "no waiting request is admitted" in preempting[0].detail


@pytest.mark.parametrize("engine", ENGINES)
def test_a_victim_whose_blocks_were_evicted_while_it_waited_recomputes_them(tmp_path, engine):
    # The workload of walkthrough 07's trace (the vllm-preemption recipe): four long decodes on 11
    # usable blocks; one victim waits long enough for others' allocations to evict its freed blocks.
    from tracer.replay.workload import memory_pressure

    timelines = replay(tmp_path, memory_pressure(num_requests=4, prompt_len=(20, 40), max_tokens=(30, 50), seed=1),
                       num_blocks=12, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=512)
    timeline = timelines[engine]
    evicted_while_away = []
    for life in timeline.requests:
        for preempt in life.preemptions:
            resume = next((step for step, _ in life.scheduled if step.start_ns >= preempt.start_ns), None)
            if resume is not None and any(set(e.hashes) & set(life.block_hashes) for e in timeline.evictions
                                          if preempt.start_ns <= e.time_ns <= resume.start_ns):
                evicted_while_away.append((life, resume))
    assert evicted_while_away, "an allocation must evict a victim's prompt block before it resumes"
    life, resume = evicted_while_away[0]
    split = split_time(timeline, life)
    assert split.parts.get("recompute", 0) > 0
    assert int(life.match_for(resume).attributes["servetrace.kv.cached_tokens"]) < life.prompt_tokens // BLOCK * BLOCK


def test_the_walkthroughs_explain_lab_is_explain_run_on_its_recipes_trace(tmp_path):
    from tracer.labs.index import run_lab

    result = run_lab("explain", {"recipe": "vllm-prefix-reasons"}, tmp_path)  # walkthrough 04
    cache, time = result.tables
    reasons_by_request = {row[0]: row[3] for row in cache.rows}
    assert reasons_by_request == {"first": "never-cached", "again": "partial-block", "exact": "last-token-recompute",
                                  "differs": "token-differs", "twin-a": "never-cached", "twin-b": "partial-block"}
    differs = next(row for row in cache.rows if row[0] == "differs")
    assert differs[4].startswith("token 20 is 7 here")  # recorded with content capture on
    assert all(float(row[4]) <= 0.01 * float(row[1]) for row in time.rows)  # residual column
    assert result.notes[0].startswith("servetrace explain trace.jsonl")
