"""`servetrace explain` on traces of SGLang 0.5.23's real Scheduler: the causes tests/test_explain.py
plants in our scheduler and vLLM's, planted again in SGLang (its Scheduler, PrefillAdder and
RadixCache, replayed in .venv-sglang and traced by the hooks a live server loads), and named alike
where the engines agree.

Where SGLang differs, the expectation says so:
- a prompt's last partial page is never looked up: SGLang's page-alignment is vLLM's partial-block;
- SGLang puts a prefill in the tree after its forward pass, vLLM caches blocks at allocation: a twin
  prompt in the same batch hits in vLLM and is still-computing in SGLang;
- SGLang retracts (after failing to admit, in update_running_batch) where vLLM preempts.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_explain import BASE, BLOCK, replay as replay_v1, request
from tracer.replay.config import ReplayConfig
from tracer.replay.runners.sglang_scheduler import replay_sglang_scheduler, sglang_venv
from tracer.traces.explain_cache import REASONS, explain_cache
from tracer.traces.explain_time import split_time
from tracer.traces.request_steps import read_timeline
from tracer.traces.trace_file import read_trace_file

pytestmark = pytest.mark.skipif(not (sglang_venv() / "bin" / "python").is_file(), reason="needs .venv-sglang (make setup)")

# vLLM's code -> SGLang's, where the mechanisms differ (see the docstring).
DIFFERS = {("partial-block", "page-alignment"), ("partial-block", "still-computing")}


def sglang(path: Path, requests, **config):
    log = replay_sglang_scheduler(requests, ReplayConfig(**{"block_size": BLOCK, **config}), trace_file=path)
    assert not log.stalled
    return read_timeline(read_trace_file(path).spans)


def reasons(timeline) -> dict[str, str]:
    return {life.name: explain_cache(timeline, life).reason for life in timeline.requests}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERVETRACE_CAPTURE_CONTENT", "1")  # token-differs names the tokens
        changed = BASE.copy()
        changed[20] = 7
        workload = [
            request("first", 0, BASE), request("again", 10, BASE), request("exact", 12, BASE[:32]),
            request("differs", 14, changed),
            request("twin-a", 20, list(range(5000, 5040))), request("twin-b", 20, list(range(5000, 5040))),
        ]
        folder = tmp_path_factory.mktemp("sglang-cache")
        return {"sglang": sglang(folder / "sglang.jsonl", workload, num_blocks=64, max_num_batched_tokens=256),
                **replay_v1(folder, workload, num_blocks=64, max_num_batched_tokens=256)}


def test_each_planted_cache_reason_is_named_as_vllm_names_it_where_the_engines_agree(planted):
    theirs, ours = reasons(planted["sglang"]), reasons(planted["vllm"])
    assert theirs == {"first": "never-cached", "again": "page-alignment", "exact": "last-token-recompute",
                      "differs": "token-differs", "twin-a": "never-cached", "twin-b": "still-computing"}
    assert ours == reasons(planted["mini"])
    assert {(ours[name], theirs[name]) for name in ours if ours[name] != theirs[name]} <= DIFFERS
    assert "page-alignment" in REASONS


def test_the_evidence_names_the_position_the_tokens_the_page_and_the_radix_path(planted):
    timeline = planted["sglang"]
    differs = explain_cache(timeline, timeline.find("differs"))
    path = differs.details.pop("radix_path")
    assert differs.details == {"position": 20, "token": 7, "other_token": 1020, "other": "first", "page": 1}
    assert "page boundary 16" in differs.evidence and differs.cached_tokens == 16
    assert sum(node["tokens"] for node in path) == 16  # the matched path's nodes add up to the hit
    assert [b["hit"] for b in differs.blocks] == [True, False]
    again = explain_cache(timeline, timeline.find("again"))
    assert again.cached_tokens == 32 and "last 8 tokens" in again.evidence and again.est_prefill_ms is not None
    exact = explain_cache(timeline, timeline.find("exact"))
    assert exact.cached_tokens == 16 and "at most 31" in exact.evidence
    assert "twin-a" in explain_cache(timeline, timeline.find("twin-b")).evidence


def test_the_explorers_cached_column_is_the_admitting_lookups_hit_as_explain_says(planted, tmp_path):
    """SGLang looks a request up more than once (lpm's pass over the waiting queue without the
    last-token cap, the admission, the insert at finish): the requests table shows the admission's."""
    from tracer.tui.model import build_model

    timeline = planted["sglang"]
    path = tmp_path / "t.jsonl"
    sglang(path, [request("first", 0, BASE), request("exact", 12, BASE[:32])], num_blocks=64)
    model = build_model(read_trace_file(path))
    explained = read_timeline(read_trace_file(path).spans)
    assert {rid: r.cached_tokens for rid, r in model.requests.items()} == \
        {life.name: life.cached_tokens for life in explained.requests} == {"first": 0, "exact": 16}
    assert explain_cache(timeline, timeline.find("exact")).cached_tokens == 16


def test_an_evicted_prefix_names_who_cached_it_and_whose_allocation_evicted_it(tmp_path):
    old = list(range(2000, 2048))
    fillers = [list(range(3000 + 100 * i, 3048 + 100 * i)) for i in range(3)]
    timeline = sglang(tmp_path / "t.jsonl", [request("old", 0, old, max_tokens=2)]
                      + [request(f"fill{i}", 6 + 6 * i, tokens, max_tokens=2) for i, tokens in enumerate(fillers)]
                      + [request("back", 40, old, max_tokens=2)], num_blocks=9, max_num_batched_tokens=64)
    back = explain_cache(timeline, timeline.find("back"))
    assert back.reason == "evicted", back.evidence
    assert back.details["cached_by"] == "old" and "fill" in back.details["evicted_by"]
    assert any(e.tokens for e in timeline.evictions), "kv.evict spans carry the evicted token counts"


def test_caching_off_is_the_reason_when_the_radix_cache_is_disabled(tmp_path):
    timeline = sglang(tmp_path / "t.jsonl", [request("a", 0, BASE), request("b", 10, BASE)], enable_prefix_caching=False)
    assert reasons(timeline) == {"a": "caching-disabled", "b": "caching-disabled"}


@pytest.mark.parametrize("config, cause", [
    ({"max_num_seqs": 1}, "max-num-seqs"),  # max_running_requests 1: the adder is never offered b
    ({"max_num_batched_tokens": 40}, "token-budget"),  # a's 40 tokens spend max_prefill_tokens
    ({"max_num_batched_tokens": 64, "enable_chunked_prefill": False, "max_model_len": 64}, "token-budget"),
    ({"num_blocks": 5}, "kv-blocks"),  # add_one_req: NO_TOKEN (rem_total_tokens counts a's reserved decodes)
])
def test_the_waiting_cause_is_read_off_the_prefill_adder_as_vllm_names_it(tmp_path, config, cause):
    other = BASE[::-1] if "max_num_seqs" in config else list(range(7000, 7040))
    timeline = sglang(tmp_path / "t.jsonl", [request("a", 0, BASE, max_tokens=6), request("b", 0, other, max_tokens=2)], **config)
    split = split_time(timeline, timeline.find("b"))
    waits = {n.what for n in split.steps if n.what.startswith("waiting")}
    assert waits == {f"waiting: {cause}"}, [vars(n) for n in split.steps]


def test_a_retracted_request_counts_its_retracted_time_and_its_recompute(tmp_path):
    # Page size 1, a 96-token pool: six 10-token prompts decoding 40 tokens each run out of room.
    timeline = sglang(tmp_path / "t.jsonl", [request(f"r{i}", 0, [50 + i] * 10, max_tokens=40) for i in range(6)],
                      block_size=1, num_blocks=97, max_num_batched_tokens=64)
    retracted = [life for life in timeline.requests if life.preemptions]
    assert retracted, "the pool must force a retract_decode"
    split = split_time(timeline, retracted[0])
    assert split.parts.get("preempted", 0) > 0 and split.parts.get("recompute", 0) > 0  # retraction frees its KV
    retracting = [s for s in timeline.steps if retracted[0].name in (s.attr("servetrace.batch.preempted_request_ids") or [])]
    assert retracting and "retracted" in retracting[0].waiting_cause()[1]
    for life in timeline.requests:
        notes = split_time(timeline, life).steps
        assert not [n for n in notes if n.what.endswith(("unrecorded", "not-offered"))], [vars(n) for n in notes]


def test_the_causes_add_up_to_the_wall_time_with_no_residual(planted):
    timeline = planted["sglang"]
    for life in timeline.requests:
        split = split_time(timeline, life)
        assert sum(split.parts.values()) + split.residual_ms == pytest.approx(split.wall_ms, rel=1e-6, abs=1e-6)
        assert split.residual_ms <= 0.01 * split.wall_ms
    running = split_time(timeline, timeline.find("first"))
    assert all(n.what in ("prefill", "decode") or "prefill-first" in n.what or n.what.startswith("waiting")
               for n in running.steps)


def test_the_command_explains_an_sglang_trace(tmp_path):
    path = tmp_path / "t.jsonl"
    sglang(path, [request("first", 0, BASE), request("again", 10, BASE)])
    text = subprocess.run([str(Path(sys.executable).parent / "servetrace"), "explain", str(path)],
                          capture_output=True, text=True, check=True).stdout
    assert "page-alignment" in text and "where the time went" in text


def test_a_salted_request_misses_the_same_prompt_in_another_namespace_of_the_tree(tmp_path, monkeypatch):
    """SGLang 0.5.23 keys a radix node by its first page and the request's extra_key / cache_salt
    (RadixKey.child_key_at, radix_cache.py:226-247; handle_generate_request copies both off the
    client's request, scheduler.py:3025-3026): the same prompt with another salt shares nothing."""
    from tracer.instrument.otel import capture_content
    from tracer.replay.runners.sglang_scheduler import SglangDriver, sglang_job

    monkeypatch.setenv("SERVETRACE_CAPTURE_CONTENT", "1")
    path = tmp_path / "t.jsonl"
    job = sglang_job([request("plain", 0, BASE), request("salted", 10, BASE), request("plain-again", 20, BASE)],
                     ReplayConfig(block_size=BLOCK, num_blocks=64))
    job["requests"][1]["cache_salt"] = "tenant-7"
    job.update(trace_file=str(path), capture_content=capture_content())
    assert not SglangDriver.shared().run(job).get("stalled")
    timeline = read_timeline(read_trace_file(path).spans)
    salted = explain_cache(timeline, timeline.find("salted"))
    assert (salted.reason, salted.cached_tokens, salted.details["other"]) == ("salt-or-adapter", 0, "plain"), salted.evidence
    assert "hash domain salted:" in salted.evidence and "here, tokens only there" in salted.evidence
    assert "tenant-7" not in str(salted.to_json())
    assert reasons(timeline) == {"plain": "never-cached", "salted": "salt-or-adapter", "plain-again": "page-alignment"}


def test_two_salts_keep_the_same_prompt_apart_and_the_hashes_alone_say_so(tmp_path, monkeypatch):
    """Without content capture the trace has the prompts' prefix hashes (of the tokens) and each lookup's
    hash domain (a digest of its extra_key / cache_salt namespace, never the salt): another salt is
    salt-or-adapter, the same salt again shares the tree's nodes."""
    from tracer.replay.runners.sglang_scheduler import SglangDriver, sglang_job

    monkeypatch.delenv("SERVETRACE_CAPTURE_CONTENT", raising=False)
    path = tmp_path / "t.jsonl"
    names = ["plain", "salt-a", "salt-b", "salt-a-again"]
    job = sglang_job([request(name, 10 * i, BASE) for i, name in enumerate(names)], ReplayConfig(block_size=BLOCK, num_blocks=64))
    for i, salt in ((1, "tenant-7"), (2, "tenant-8"), (3, "tenant-7")):
        job["requests"][i]["cache_salt"] = salt
    job.update(trace_file=str(path), capture_content=False)
    assert not SglangDriver.shared().run(job).get("stalled")
    timeline = read_timeline(read_trace_file(path).spans)
    assert all(life.prompt_token_ids is None for life in timeline.requests)
    domains = {life.name: life.hash_domain for life in timeline.requests}
    assert domains["plain"] is None and domains["salt-a"] == domains["salt-a-again"] != domains["salt-b"]
    assert "tenant" not in path.read_text()
    assert reasons(timeline) == {"plain": "never-cached", "salt-a": "salt-or-adapter", "salt-b": "salt-or-adapter",
                                 "salt-a-again": "page-alignment"}
    other = explain_cache(timeline, timeline.find("salt-b"))
    assert other.details["other"] == "plain" and "at least its first 32 tokens (by hash)" in other.evidence, other.evidence


def test_an_eviction_names_the_same_lost_node_in_sglang_and_in_our_sglang_mode(tmp_path):
    """The node an eviction took, joined to the miss by its parent and first page: SGLang's tree and ours
    in cache_mode sglang (tests/test_explain_mini_sglang.py) name the same page and position."""
    from tests.test_explain_mini_sglang import mini_sglang

    old = list(range(2000, 2048))
    fillers = [list(range(3000 + 100 * i, 3048 + 100 * i)) for i in range(3)]
    workload = ([request("old", 0, old, max_tokens=2)]
                + [request(f"fill{i}", 6 + 6 * i, tokens, max_tokens=2) for i, tokens in enumerate(fillers)]
                + [request("back", 40, old, max_tokens=2)])
    config = dict(num_blocks=9, max_num_batched_tokens=64)
    theirs = sglang(tmp_path / "t.jsonl", workload, **config)
    _, ours = mini_sglang(tmp_path / "mini", workload, **config)
    lost = []
    for timeline in (theirs, ours):
        back = explain_cache(timeline, timeline.find("back"))
        assert back.reason == "evicted" and "radix node" in back.evidence, back.evidence
        node = back.details["evicted_node"]
        lost.append((node["start"], node["tokens"], back.details["cached_by"],
                     next(n["key"] for e in timeline.evictions for n in e.nodes if n["id"] == node["node"])))
    assert lost[0] == lost[1] and lost[0][:3] == (0, 48, "old")
