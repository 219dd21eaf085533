"""The explorer driven through Textual's Pilot at 80x24, on real recorded traces, and its
main screens pinned by snapshots (ids and times normalised: see tests/test_tui_traces.py)."""
from __future__ import annotations

import io

import pytest

from tests.test_tui_traces import engine_run, replay_run
from tracer.cli import main as cli_main
from tracer.catalog.source import locate
from tracer.tui.app import ExplorerApp
from tracer.tui.screens import CompareScreen, HelpScreen, SourceScreen
from tracer.tui.widgets import RequestsTable, SidePanel, WaterfallTable

SIZE = (80, 24)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def rendered(widget) -> str:
    """The text a Static widget shows, whitespace runs collapsed."""
    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(widget.content)
    return " ".join(console.export_text().split())


def state_shown(app: ExplorerApp) -> str:
    """The state part of the side panel, whitespace runs collapsed."""
    return " ".join(app.query_one("#side", SidePanel).state_text().split())


def waterfall(app: ExplorerApp) -> WaterfallTable:
    return app.query_one("#waterfall", WaterfallTable)


async def test_selecting_a_request_shows_its_hops():
    run = engine_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SIZE) as pilot:
        assert app.query_one("#requests", RequestsTable).row_count == 2
        assert waterfall(app).waterfall.request.request_id == run.request_ids[0]
        await pilot.press("down")
        shown = waterfall(app).waterfall
        assert shown.request.request_id == run.request_ids[1]
        assert waterfall(app).row_count == len(shown.rows)
        await pilot.press("enter")
        assert app.focused is waterfall(app)


async def test_stepping_through_hops_moves_the_state_panel_with_it():
    run = engine_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("down", "enter")
        rows = waterfall(app).rows_shown
        lookup = next(i for i, r in enumerate(rows) if r.span.name == "kv.match_prefix")
        await pilot.press(*["n"] * lookup)
        assert waterfall(app).current() is rows[lookup]
        state = state_shown(app)
        assert f"hop {lookup + 1} of {len(rows)}" in state
        assert f"{run.cached_tokens[1]} cached tokens" in state
        await pilot.press("p")
        assert waterfall(app).cursor_row == lookup - 1
        await pilot.press("right_square_bracket")
        here = waterfall(app).current()
        assert here.state.step == rows[lookup].state.step + 1 and here.span.name == "engine.step"


async def test_the_waterfall_cursor_scrolls_with_keys_and_follows_the_mouse():
    run = engine_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("down", "enter")
        table = waterfall(app)
        visible = table.scrollable_content_region.height - 1  # the header stays on the first line
        assert table.row_count > visible and table.scroll_offset.y == 0
        await pilot.press("end")
        assert table.cursor_row == table.row_count - 1
        assert table.scroll_offset.y == table.row_count - visible  # the last row in view
        await pilot.press("home")
        assert table.cursor_row == 0 and table.scroll_offset.y == 0
        await pilot.press("pagedown")
        assert table.cursor_row == visible and table.scroll_offset.y > 0
        await pilot.press("home")
        # A click highlights the row under the mouse (the panels follow); a second click selects it.
        await pilot.click(WaterfallTable, offset=(10, 3))  # line 3: row 2, under the header
        assert table.cursor_row == 2
        assert f"hop 3 of {table.row_count}" in state_shown(app)
        await pilot.click(WaterfallTable, offset=(10, 3))
        assert isinstance(app.screen, SourceScreen) and app.screen.hop == table.rows_shown[2].span.name


async def test_clicking_a_request_shows_its_hops():
    run = engine_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.click(RequestsTable, offset=(2, 2))  # line 2: the second request
        assert app.query_one("#requests", RequestsTable).cursor_row == 1
        assert waterfall(app).waterfall.request.request_id == run.request_ids[1]


async def test_the_source_pane_shows_each_engine_at_its_installed_file_and_line():
    app = ExplorerApp.from_paths([engine_run().trace])
    async with app.run_test(size=SIZE) as pilot:
        rows = waterfall(app).rows_shown
        allocate = next(i for i, r in enumerate(rows) if r.span.name == "kv.allocate")
        await pilot.press(*["n"] * allocate, "s")
        screen = app.screen
        assert isinstance(screen, SourceScreen) and screen.hop == "kv.allocate"
        ours = locate("engine.kv_cache_manager:KVCacheManager.allocate_slots")
        vllm = locate("vllm.v1.core.kv_cache_manager:KVCacheManager.allocate_slots")
        assert f"engine/kv_cache_manager.py:{ours.line}" in rendered(screen.query_one("#pane-ours .pane-title"))
        assert f"vllm/v1/core/kv_cache_manager.py:{vllm.line}" in rendered(screen.query_one("#pane-upstream .pane-title"))
        await pilot.press("e")
        assert "sglang 0.5.23" in rendered(screen.query_one("#pane-upstream .pane-title"))
        await pilot.press("n")  # the next hop, without leaving the source
        assert screen.hop == rows[allocate + 1].span.name
        await pilot.press("escape")
        assert not isinstance(app.screen, SourceScreen)
        assert waterfall(app).cursor_row == allocate + 1


async def test_compare_jumps_to_the_first_divergence_of_two_replays():
    """As `make demo` opens it: a served request's trace first, then the two replays it compares."""
    run = replay_run()
    app = ExplorerApp.from_paths([engine_run().trace, run.mini, run.vllm_no_prefix_cache])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        summary = rendered(screen.query_one("#compare-summary"))
        assert f"first at step {run.divergence_step_index + 1}" in summary
        await pilot.press("g")
        table = screen.query_one("#compare-table")
        assert table.cursor_row == run.divergence_step_index
        detail = rendered(screen.query_one("#compare-detail"))
        assert f"step {run.divergence_step_index + 1}" in detail


async def test_agreeing_replays_compare_equal():
    run = replay_run()
    app = ExplorerApp.from_paths([run.mini, run.vllm])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        assert "agree on all" in rendered(app.screen.query_one("#compare-summary"))
        await pilot.press("escape", "x")
        assert app.model.engine == "vllm"


async def test_full_garbage_collections_wait_for_a_pause_in_the_input():
    """A full collection rescans every object made since the trace was read (tens of ms):
    while the explorer runs it waits until the user pauses, and the process's settings come
    back when the explorer exits."""
    import gc
    import time

    before = gc.get_threshold()
    app = ExplorerApp.from_paths([engine_run().trace])
    async with app.run_test(size=SIZE) as pilot:
        assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > before[2]
        await pilot.press("n")
        gc.collect(1)  # a young collection: a full one is now due
        app.collector.tick()
        assert gc.get_count()[2] > 0, "a key was just pressed: no full collection yet"
        app.collector.last_input = time.monotonic() - 2 * app.collector.idle_s
        app.collector.tick()
        assert gc.get_count()[2] == 0, "the user paused: the full collection ran"
    assert gc.get_threshold() == before


async def test_a_malformed_file_opens_with_what_is_readable_and_says_so(tmp_path):
    lines = engine_run().trace.read_text().splitlines(keepends=True)
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(lines[:-1]) + "{not json\n" + lines[-1][:100])
    app = ExplorerApp.from_paths([path])
    async with app.run_test(size=SIZE):
        warning = app.query_one("#warning")
        assert warning.display and "broken.jsonl: skipped 2 unreadable line(s)" in rendered(warning)
        assert app.query_one("#requests", RequestsTable).row_count >= 1


async def test_filters_narrow_requests_and_hops():
    run = engine_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *run.request_ids[1])
        assert app.query_one("#requests", RequestsTable).row_count == 1
        await pilot.press("ctrl+a", "ctrl+k", *"hop:kv.", "enter")
        names = {r.span.name for r in waterfall(app).rows_shown}
        assert names and all(n.startswith("kv.") for n in names)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)


def test_without_a_terminal_the_command_prints_a_summary(capsys):
    run = replay_run()
    assert cli_main(["tui", str(run.mini), str(run.vllm)]) == 0
    out = capsys.readouterr().out
    assert "agree on all" in out and all(r.id in out for r in run.workload)


def test_a_missing_file_is_one_clear_error(capsys, tmp_path):
    assert cli_main(["tui", str(tmp_path / "nope.jsonl")]) == 2
    assert "no trace file at" in capsys.readouterr().err


# -- snapshots ------------------------------------------------------------------------------


def test_snapshot_requests_and_waterfall(snap_compare):
    assert snap_compare(ExplorerApp.from_paths([engine_run().trace]), terminal_size=SIZE, press=["down", "enter"])


def test_snapshot_replay_state_at_a_cache_hit(snap_compare):
    app = ExplorerApp.from_paths([engine_run().trace])
    assert snap_compare(app, terminal_size=SIZE, press=["down", "enter"] + ["n"] * 4)


def test_snapshot_compare_at_first_divergence(snap_compare):
    run = replay_run()
    assert snap_compare(ExplorerApp.from_paths([run.mini, run.vllm_no_prefix_cache]), terminal_size=SIZE, press=["c", "g"])


def test_snapshot_help(snap_compare):
    assert snap_compare(ExplorerApp.from_paths([engine_run().trace]), terminal_size=SIZE, press=["question_mark"])
