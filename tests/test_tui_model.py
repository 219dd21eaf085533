"""The explorer's data model on real traces: requests, the steps they took part in, the
waterfall and the state at each hop, the step-by-step comparison of two replays."""
from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from tests.test_tui_traces import BLOCK_SIZE, MAX_TOKENS, engine_run, replay_run
from tracer.tui.compare import compare_models
from tracer.tui.format import bar
from engine.math_utils import cdiv
from tracer.tui.loader import load_trace
from tracer.tui.model import build_model
from tracer.tui.summary import print_summary
from tracer.tui.timeline import build_waterfall


def engine_model():
    return build_model(load_trace(engine_run().trace))


def test_requests_carry_the_engines_own_account():
    run, model = engine_run(), engine_model()
    assert list(model.requests) == list(run.request_ids)
    for i, rid in enumerate(run.request_ids):
        request = model.requests[rid]
        assert (request.prompt_tokens, request.output_tokens, request.cached_tokens) == (
            run.prompt_tokens[i], run.output_tokens[i], run.cached_tokens[i])
        assert request.status == "length"
        assert 0 < request.ttft_ns < request.latency_ns
    assert run.cached_tokens[1] > 0 and run.cached_tokens[1] % BLOCK_SIZE == 0


def test_a_request_took_part_in_exactly_the_steps_whose_batch_names_it():
    model = engine_model()
    for rid, request in model.requests.items():
        expected = [s.index for s in model.steps
                    if any(rid in sp.attributes.get("servetrace.batch.request_ids", []) for sp in s.spans)]
        assert [s.index for s in request.steps] == expected
        # Each step it took part in produced or advanced it: a prefill chunk or one decode token.
        assert len(request.steps) >= MAX_TOKENS


def test_the_waterfall_runs_from_the_request_root_through_every_step_down_to_the_forward_pass():
    model = engine_model()
    request = model.requests[engine_run().request_ids[1]]
    rows = build_waterfall(model, request).rows
    assert rows[0].span.name == "request.render" and rows[0].depth == 0
    assert [r.span.start_ns for r in rows] == sorted(r.span.start_ns for r in rows)
    assert [r.step.number for r in rows if r.span.name == "engine.step"] == [s.number for s in request.steps]
    assert len([r for r in rows if r.span.name == "model.forward"]) == len(request.steps)
    for row in rows:
        if row.span.name == "model.forward":
            assert row.depth == 3  # request root > engine.step > model.execute > model.forward
    # A request span recorded inside a step sits one level under the step span it links to.
    (lookup,) = [r for r in rows if r.span.name == "kv.match_prefix"]
    schedule = next(r for r in rows if r.span.name == "scheduler.schedule" and r.step is lookup.step)
    assert lookup.depth == schedule.depth + 1


def test_the_state_at_each_hop_follows_the_requests_blocks_and_matched_prefix():
    run, model = engine_run(), engine_model()
    request = model.requests[run.request_ids[1]]
    rows = build_waterfall(model, request).rows
    (lookup,) = [r for r in rows if r.span.name == "kv.match_prefix"]
    assert lookup.state.matched_prefix == run.cached_tokens[1]
    assert len(lookup.state.blocks) == run.cached_tokens[1] // BLOCK_SIZE
    allocations = [r for r in rows if r.span.name == "kv.allocate"]
    last = allocations[-1].state
    assert len(last.blocks) == cdiv(run.prompt_tokens[1], BLOCK_SIZE)
    assert last.computed_tokens == run.prompt_tokens[1]
    assert rows[-1].state.freed and rows[-1].state.blocks == ()
    assert all(r.state.num_running is not None for r in rows if r.step is not None)
    first_step = next(r for r in rows if r.span.name == "engine.step")
    assert dict(first_step.state.batch)[request.request_id] > 0


def test_replayed_traces_of_one_workload_agree_step_by_step():
    run = replay_run()
    mini, vllm = build_model(load_trace(run.mini)), build_model(load_trace(run.vllm))
    assert set(mini.requests) == set(vllm.requests) == {r.id for r in run.workload}
    for workload_request in run.workload:
        assert mini.requests[workload_request.id].output_tokens == workload_request.max_tokens
    comparison = compare_models(mini, vllm)
    assert len(mini.steps) == len(vllm.steps) == len(comparison.pairs)
    assert comparison.first_divergence is None
    first = comparison.pairs[0]
    assert {"batch", "cached", "free_blocks"} <= set(first.left_fields) & set(first.right_fields)


def test_the_first_divergence_is_where_replay_itself_finds_it():
    run = replay_run()
    comparison = compare_models(build_model(load_trace(run.mini)), build_model(load_trace(run.vllm_no_prefix_cache)))
    assert run.divergence_step_index is not None
    assert comparison.first_divergence == run.divergence_step_index
    pair = comparison.pairs[comparison.first_divergence]
    assert "cached" in pair.differing or "batch" in pair.differing


def test_a_truncated_file_keeps_its_readable_spans_and_says_what_was_skipped(tmp_path):
    lines = engine_run().trace.read_text().splitlines(keepends=True)
    path = tmp_path / "cut.jsonl"
    path.write_text("".join(lines[:-1]) + "{garbage\n" + lines[-1][: len(lines[-1]) // 2])
    model = build_model(load_trace(path))
    assert model.spans and model.requests
    warning = model.warning()
    assert "cut.jsonl: skipped 2 unreadable line(s)" in warning and "and 1 more" in warning
    assert f"showing the {len(model.spans)} spans" in warning


def test_the_summary_prints_requests_and_the_comparison():
    run = replay_run()
    out = io.StringIO()
    print_summary([run.mini, run.vllm_no_prefix_cache], Console(file=out, width=120))
    text = out.getvalue()
    assert all(r.id in text for r in run.workload)
    assert f"first at step {run.divergence_step_index + 1}" in text


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6), st.integers(1, 60))
def test_a_bar_is_always_as_wide_as_asked_and_marks_the_span(start, length, total, width):
    text = bar(start, start + length, 0, total, width)
    assert len(text) == width
    assert text.strip() != ""


def test_walkthrough_notes_are_the_note_blocks_the_site_renders(tmp_path):
    from tracer.tui.walkthroughs import notes_for

    (tmp_path / "01-prefix.md").write_text(
        "---\ntitle: Prefix caching\n---\n# Prefix caching\n\n"
        "::: note hop=kv.match_prefix\n    Hashes full blocks\n    and walks them.\n\n"
        "::: note hop=kv.allocate engine=vllm\n    Touches the hit blocks.\n"
    )
    [match] = notes_for("kv.match_prefix", tmp_path)
    assert (match.text, match.title, match.walkthrough) == ("Hashes full blocks and walks them.", "Prefix caching", "01-prefix.md")
    assert notes_for("kv.allocate", tmp_path)[0].engine == "vllm"
    assert notes_for("scheduler.schedule", tmp_path) == ()
