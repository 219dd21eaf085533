"""`servetrace explain` on our engine's SGLang mode (cache_mode sglang: engine/sglang_scheduler.py over
engine/radix_cache.py) and on the radix-cache replay's traces: read with SGLang's logic (radix path,
page alignment, the node an eviction took), as the catalog maps the mode (engines.mini.modes.sglang),
and shown by the explorer under the mode's label with SGLang's code beside ours.

The expectations are SGLang's own (tests/test_explain_sglang.py plants the same workload in SGLang's
real Scheduler): page-alignment where vLLM says partial-block, still-computing for a same-batch twin.
"""
from __future__ import annotations

import pytest

from tests.test_explain import BASE, BLOCK, request
from tests.test_replay_radix_traces import WORKLOAD as RADIX_WORKLOAD
from tracer.replay.config import ReplayConfig
from tracer.replay.session import run_replay
from tracer.traces import schema
from tracer.traces.explain_cache import explain_cache
from tracer.traces.explain_time import split_time
from tracer.traces.request_steps import read_timeline
from tracer.traces.trace_file import read_trace_file

# What SGLang's real Scheduler says of the same workload (tests/test_explain_sglang.py).
SGLANG_REASONS = {"first": "never-cached", "again": "page-alignment", "exact": "last-token-recompute",
                  "differs": "token-differs", "twin-a": "never-cached", "twin-b": "still-computing"}


def mini_sglang(folder, requests, **config):
    run_replay(requests, ReplayConfig(**{"block_size": BLOCK, **config}), ["mini-sglang"], out_dir=folder)
    path = folder / "trace-mini-sglang.jsonl"
    return path, read_timeline(read_trace_file(path).spans)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERVETRACE_CAPTURE_CONTENT", "1")
        changed = BASE.copy()
        changed[20] = 7
        return mini_sglang(tmp_path_factory.mktemp("mini-sglang"), [
            request("first", 0, BASE), request("again", 10, BASE), request("exact", 12, BASE[:32]),
            request("differs", 14, changed),
            request("twin-a", 20, list(range(5000, 5040))), request("twin-b", 20, list(range(5000, 5040))),
        ], num_blocks=64, max_num_batched_tokens=256)


def test_our_sglang_mode_is_explained_by_sglangs_logic_as_sglangs_own_scheduler_is(planted):
    _, timeline = planted
    assert (timeline.engine, timeline.mode, timeline.label, timeline.mirrors) == ("mini", "sglang", "mini-sglang", "sglang")
    assert {life.name: explain_cache(timeline, life).reason for life in timeline.requests} == SGLANG_REASONS


def test_its_lookups_are_in_their_requests_traces_with_the_radix_path(planted):
    _, timeline = planted
    for life in timeline.requests:
        assert life.matches and all(m.attributes.get(schema.REQUEST_ID) == life.name for m in life.matches)
        assert life.prefix_hashes, "the prompt's prefix hashes ride on its first lookup"
    differs = explain_cache(timeline, timeline.find("differs"))
    wording = differs.granularity()
    path = differs.details.pop("radix_path")
    assert differs.details == {"position": 20, "token": 7, "other_token": 1020, "other": "first", "page": 1}
    assert sum(node["tokens"] for node in path) == differs.cached_tokens == 16
    assert differs.unit == "prefix unit" and wording.startswith("page size 16 · radix path node ")


def test_an_evicted_prefix_names_the_radix_node_it_lost(tmp_path):
    old = list(range(2000, 2048))
    fillers = [list(range(3000 + 100 * i, 3048 + 100 * i)) for i in range(3)]
    _, timeline = mini_sglang(tmp_path, [request("old", 0, old, max_tokens=2)]
                              + [request(f"fill{i}", 6 + 6 * i, tokens, max_tokens=2) for i, tokens in enumerate(fillers)]
                              + [request("back", 40, old, max_tokens=2)], num_blocks=9, max_num_batched_tokens=64)
    back = explain_cache(timeline, timeline.find("back"))
    assert back.reason == "evicted", back.evidence
    node = back.details["evicted_node"]
    # old's 48-token prompt was one node under the root, where back's lookup stopped (it matched nothing).
    assert (node["start"], node["tokens"], back.details["cached_by"]) == (0, 48, "old")
    assert back.details["evicted_path"] == [node["node"]] and f"radix node {node['node']} (tokens 0-47)" in back.evidence
    assert "fill" in back.details["evicted_by"]
    lost = [n for e in timeline.evictions for n in e.nodes if n["id"] == node["node"]]
    assert len(lost) == 1 and lost[0]["parent"] == timeline.find("back").admission_match.attributes[schema.RADIX_NODE_ID]


@pytest.mark.parametrize("name", ["mini-radix", "sglang"])
def test_the_radix_cache_replays_traces_are_explained_not_said_to_lack_hashes(tmp_path_factory, name):
    out = tmp_path_factory.getbasetemp() / "radix-explain"
    if not (out / f"trace-{name}.jsonl").exists():
        run_replay(RADIX_WORKLOAD, ReplayConfig(block_size=16, radix_pool_tokens=288, radix_concurrency=2),
                   ["mini", "sglang"], out_dir=out)
    timeline = read_timeline(read_trace_file(out / f"trace-{name}.jsonl").spans)
    assert timeline.mirrors == "sglang"
    found = {life.name: explain_cache(timeline, life) for life in timeline.requests}
    assert {rid: m.reason for rid, m in found.items()} == {
        "r0": "never-cached",
        "r1": "still-computing", "r2": "still-computing",  # r0 is in flight: the replay inserts at finish
        "r3": "token-differs", "r4": "token-differs", "r5": "token-differs",  # the 64-token system prompt hit
    }
    assert "inserts a request's tokens when it finishes" in found["r1"].evidence
    assert all(found[f"r{i}"].cached_tokens == 64 for i in (3, 4, 5))
    assert any(e.nodes for e in timeline.evictions), "the replay's eviction names the nodes it took"


def test_the_explorer_labels_the_trace_by_its_mode_and_opens_sglangs_code_beside_ours(planted):
    from tracer.tui.loader import load_trace
    from tracer.tui.model import build_model
    from tracer.tui.source_screen import SourceScreen
    from tracer.tui.sources import hop_sources
    from tracer.tui.widgets import title_of

    path, _ = planted
    model = build_model(load_trace(path))
    assert (model.engine, model.engine_mode, model.engine_label, model.mirrors) == ("mini", "sglang", "mini-sglang", "sglang")
    assert title_of(model).endswith("(mini-sglang)")
    screen = SourceScreen("scheduler.schedule", model.mirrors, "", "", model.engine_mode)
    assert screen.upstream == "sglang"
    ours = hop_sources("scheduler.schedule")["mini"]
    assert ours[screen.first_target(ours)].spec == "engine.sglang_scheduler:SglangScheduler.schedule"
    plain = SourceScreen("scheduler.schedule", "mini")
    assert ours[plain.first_target(ours)].spec == "engine.scheduler:Scheduler.schedule"
    # The header's walkthrough notes are SGLang's beside SGLang's code (walkthrough 04 has one per engine).
    from tracer.tui.walkthroughs import notes_for
    by_engine = {note.engine: note.text for note in notes_for("kv.match_prefix")}
    header = SourceScreen("kv.match_prefix", model.mirrors, "", "", model.engine_mode).header_text().plain
    assert by_engine["sglang"][:80] in header and by_engine["vllm"][:80] not in header
    vllm_side = SourceScreen("kv.match_prefix", "vllm").header_text().plain
    assert by_engine["vllm"][:80] in vllm_side and by_engine["sglang"][:80] not in vllm_side


@pytest.mark.parametrize("config, cause", [
    ({"max_num_seqs": 1}, "max-num-seqs"),
    ({"max_num_batched_tokens": 40}, "token-budget"),
    ({"max_num_batched_tokens": 64, "enable_chunked_prefill": False, "max_model_len": 64}, "token-budget"),
    ({"num_blocks": 5}, "kv-blocks"),
])
def test_its_waiting_causes_are_read_off_its_prefill_adder_as_sglangs_are(tmp_path, config, cause):
    """The workloads and causes of tests/test_explain_sglang.py's SGLang Scheduler test, through our mode."""
    other = BASE[::-1] if "max_num_seqs" in config else list(range(7000, 7040))
    _, timeline = mini_sglang(tmp_path, [request("a", 0, BASE, max_tokens=6), request("b", 0, other, max_tokens=2)], **config)
    split = split_time(timeline, timeline.find("b"))
    waits = {n.what for n in split.steps if n.what.startswith("waiting")}
    assert waits == {f"waiting: {cause}"}, [vars(n) for n in split.steps]
    running = split_time(timeline, timeline.find("a"))
    assert not [n for n in running.steps if n.what.startswith("not scheduled") and "prefill-first" not in n.what], \
        [vars(n) for n in running.steps]


def test_priority_schedulings_prefix_refresh_touches_the_tree_without_a_lookup_of_its_own(tmp_path):
    """SGLang's fcfs-with-priority pass touches the waiting requests' prefixes every 32nd call
    (SchedulePolicy._touch_waiting_prefixes, schedule_policy.py:282-302) through
    RadixCache.touch_prefix, which no hop hooks: our mode's trace has no lookup without a request,
    and the refresh still stamps the waiting requests' cached prefixes."""
    from engine.radix_cache import RadixCache
    from engine.schedule_policy import WaitingPrefixRefresh

    workload = [request(f"r{i}", 0, BASE[: 32 + i], max_tokens=3, priority=i % 3) for i in range(6)]
    _, timeline = mini_sglang(tmp_path, workload, num_blocks=64, max_num_batched_tokens=64, max_num_seqs=2,
                              policy="priority")
    spans = sorted(read_trace_file(tmp_path / "trace-mini-sglang.jsonl").spans, key=lambda s: s.start_ns)
    lookups = [s for s in spans if s.name == "kv.match_prefix"]
    assert len({s.attributes.get(schema.REQUEST_ID) for s in lookups} - {None}) == len(workload)
    for lookup in lookups:
        if lookup.attributes.get(schema.REQUEST_ID) is None:
            # Only a checkpoint's re-match (sglang_kv.checkpoint, as RadixCache.checkpoint matches its
            # own key without the request, radix_cache.py:524): right after the insert of that key.
            siblings = [s for s in spans if s.parent_span_id == lookup.parent_span_id and s.end_ns <= lookup.start_ns]
            assert siblings and siblings[-1].name == "kv.insert", "a request-less lookup that is no checkpoint's"
            assert siblings[-1].attributes[schema.KEY_TOKENS] == lookup.attributes[schema.KEY_TOKENS]
    # The touch is still made: a waiting request's cached prefix gets a fresh access stamp.
    ticks = iter(range(100))
    tree = RadixCache(None, page_size=1, clock=lambda: next(ticks))
    tree.insert(BASE[:16])
    before = tree.match_prefix(BASE[:16]).last_node.last_access_time

    class Waiting:
        def fill_ids(self):
            return BASE[:16]

    WaitingPrefixRefresh()([Waiting()], type("KV", (), {"tree": tree})())
    assert tree.root_node.children[BASE[0]].last_access_time > before


def test_the_why_views_reason_meanings_speak_of_pages_and_nodes_not_blocks(planted):
    """A radix trace's codes mean what explain_radix found (explain_radix.RADIX_REASONS): the why
    view says 'no earlier request in the trace had this prefix', not a hash cache's 'this block'."""
    from tracer.traces.explain_radix import RADIX_REASONS
    from tracer.tui.why import Why

    _, timeline = planted
    for life in timeline.requests:
        miss = explain_cache(timeline, life)
        meaning = Why(life.name, cache=miss).reason_meaning
        assert meaning == RADIX_REASONS[miss.reason] and "block" not in meaning.replace("partial-block", ""), (life.name, meaning)
