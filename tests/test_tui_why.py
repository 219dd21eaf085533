"""The explorer's "why" view (w): the selected request's time split and prefix-cache miss, as
`servetrace explain` computes them from the same trace, driven through Textual's Pilot; and a
snapshot of it on the recorded live vLLM trace.

The planted trace is a replay through vLLM 0.33's real Scheduler (in-process, forced outputs):
"differs" repeats "first"'s prompt but token 20, so its second block misses with token-differs.
"""
from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import pytest

from tracer.traces.explain_cache import REASONS, explain_cache
from tracer.traces.explain_time import split_time
from tracer.traces.request_steps import read_timeline
from tracer.traces.trace_file import read_trace_file
from tracer.tui import why as why_module
from tracer.tui.app import ExplorerApp
from tracer.tui.screens import HelpScreen
from tracer.tui.why_screen import StepNotes, WhyScreen

DATA = Path(__file__).parent / "data"
SIZE = (80, 24)
WIDE = (140, 40)
BASE = list(range(1000, 1040))  # 40 tokens: two full 16-token blocks and 8 more
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    from tracer.replay.config import ReplayConfig
    from tracer.replay.session import run_replay
    from tracer.replay.workload import WorkloadRequest

    changed = BASE.copy()
    changed[20] = 7
    out = tmp_path_factory.mktemp("why")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERVETRACE_CAPTURE_CONTENT", "1")  # token-differs names the two tokens
        result = run_replay([WorkloadRequest("first", 0, BASE, 4, 0), WorkloadRequest("differs", 10, changed, 4, 0)],
                            ReplayConfig(block_size=16, num_blocks=64, max_num_batched_tokens=256), ["vllm"], out_dir=out)
    assert not result.logs["vllm"].stalled
    return out / "trace-vllm.jsonl"


@cache
def reference(path: Path) -> dict:
    """What `servetrace explain` says of each request, read with the reference trace reader."""
    timeline = read_timeline(read_trace_file(path).spans)
    return {life.name: (split_time(timeline, life), explain_cache(timeline, life)) for life in timeline.requests}


def text_of(app: ExplorerApp, selector: str) -> str:
    """What a Static of the screen shows, whitespace runs collapsed."""
    from rich.console import Console

    console = Console(width=300, record=True, file=io.StringIO())
    console.print(app.screen.query_one(selector).content)
    return " ".join(console.export_text().split())


async def open_why(pilot, request_id: str) -> WhyScreen:
    app = pilot.app
    rows = [r.request_id for r in app.shown_requests]
    for _ in range(rows.index(request_id)):
        await pilot.press("down")
    await pilot.press("w")
    await settled(pilot)
    assert isinstance(app.screen, WhyScreen)
    return app.screen


async def settled(pilot) -> None:
    """The view reads the timeline in a worker thread; its result comes back through the app's queue."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def test_w_explains_the_selected_request_as_explain_does(planted):
    split, cache_miss = reference(planted)["differs"]
    assert cache_miss.reason == "token-differs"  # the planted scenario, said by the reference reader
    app = ExplorerApp.from_paths([planted])
    async with app.run_test(size=WIDE) as pilot:
        screen = await open_why(pilot, "differs")
        assert screen.request.request_id == "differs"
        cache_text = text_of(app, "#why-cache")
        assert f"token-differs: {REASONS['token-differs']}" in cache_text
        assert "token 20 is 7 here and 1020 in first" in cache_text
        assert "16 of 40 prompt tokens cached · 1 of 2 full blocks hit · 16-token blocks" in cache_text
        assert f"{cache_miss.uncached_tokens} tokens computed, about {cache_miss.est_prefill_ms:.1f} ms of prefill" in cache_text
        split_text = text_of(app, "#why-split")
        assert "prefill" in split.parts and "decode" in split.parts
        for label, ms in split.parts.items():
            assert f"{label} {ms:.2f} {ms / split.wall_ms:.1%}" in split_text
        assert f"residual (no cause) {split.residual_ms:.2f}" in split_text
        assert "prefix cache: token-differs" in text_of(app, "#why-title")
        steps = screen.query_one("#why-steps", StepNotes)
        assert [(n.step, n.what, n.detail) for n in steps.notes] == [(n.step, n.what, n.detail) for n in split.steps]
        assert steps.row_count == len(split.steps) > 0


async def test_n_and_p_walk_the_requests_and_the_main_view_follows(planted):
    app = ExplorerApp.from_paths([planted])
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_why(pilot, "first")
        assert "never-cached" in text_of(app, "#why-cache")
        await pilot.press("n")
        await settled(pilot)
        assert screen.request.request_id == "differs" and "token-differs" in text_of(app, "#why-cache")
        await pilot.press("n")  # the last request: nowhere further
        await settled(pilot)
        assert screen.request.request_id == "differs"
        await pilot.press("escape")
        assert not isinstance(app.screen, WhyScreen)
        assert app.query_one("#waterfall").waterfall.request.request_id == "differs"


async def test_the_timeline_is_read_once_per_trace(planted, monkeypatch):
    reads = []

    def counting(spans, catalog=None):
        reads.append(len(spans))
        return read_timeline(spans, catalog)

    monkeypatch.setattr(why_module, "read_timeline", counting)
    app = ExplorerApp.from_paths([planted])
    async with app.run_test(size=SIZE) as pilot:
        await open_why(pilot, "first")
        await pilot.press("n")
        await settled(pilot)
        await pilot.press("p", "escape")
        await pilot.press("w")
        await settled(pilot)
        assert "never-cached" in text_of(app, "#why-cache")
    assert reads == [len(app.model.spans)]


async def test_every_request_of_a_live_vllm_trace_gets_explains_reason():
    """A live server's rows fold vLLM's internal ids and the client's X-Request-Id: each row still
    finds its request in the timeline."""
    path = DATA / "live-vllm.jsonl"
    expected = reference(path)
    app = ExplorerApp.from_paths([path])
    async with app.run_test(size=WIDE) as pilot:
        screen = await open_why(pilot, app.shown_requests[0].request_id)
        seen = {}
        for _ in app.shown_requests:
            why = screen.why
            assert why is not None and why.cache is not None and why.split is not None
            seen[why.cache.request] = why.cache.reason
            assert f"{why.cache.reason}: {REASONS[why.cache.reason]}" in text_of(app, "#why-cache")
            await pilot.press("n")
            await settled(pilot)
    assert seen == {name: c.reason for name, (_, c) in expected.items()}


async def test_an_sglang_trace_is_explained_and_says_what_an_old_trace_lacks():
    # tests/data/live-sglang.jsonl predates the PrefillAdder state and the radix prefix hashes.
    app = ExplorerApp.from_paths([DATA / "live-sglang.jsonl"])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("w")
        await settled(pilot)
        assert isinstance(app.screen, WhyScreen)
        why = app.screen.why
        assert why is not None and why.split is not None and why.cache is not None
        assert why.cache.reason in REASONS and why.cache.reason in text_of(app, "#why-cache")


async def test_the_help_lists_the_why_keys():
    app = ExplorerApp.from_paths([DATA / "live-vllm.jsonl"])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_text = app.screen.text().plain
        assert "w                  why the request took its time" in help_text
        assert "n                  explain the next request" in help_text


def test_snapshot_why_on_a_live_vllm_request(snap_compare):
    """The shared-prefix request of the recorded live trace: its split, cache lines and steps."""
    app = ExplorerApp.from_paths([DATA / "live-vllm.jsonl"])
    assert snap_compare(app, terminal_size=WIDE, run_before=_open_last_why)


async def _open_last_why(pilot) -> None:
    await pilot.press("end", "w")
    await settled(pilot)


def test_snapshot_why_at_80x24_keeps_the_reason_in_view(snap_compare):
    """At 80 columns the cache lines go under the split; a request of a few steps leaves them the
    room its steps do not need, so the reason line is on screen without scrolling."""
    app = ExplorerApp.from_paths([DATA / "live-vllm.jsonl"])
    assert snap_compare(app, terminal_size=SIZE, run_before=_open_why_of_the_first_prefix_request)


async def _open_why_of_the_first_prefix_request(pilot) -> None:
    await open_why(pilot, "cmpl-sample-prefix-0-0")
