"""The explorer's keys (one list per screen, read by the footer and the help), the applied
filter shown, and the source pane at 80x24 and 160x48: the request's own handler, paths on one
line, code lines cut with an ellipsis, both panes scrolled together, the hop's notes in full."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from tests.test_tui_panels import SMALL, LARGE, screen_lines
from tests.test_tui_traces import engine_run, http_run
from tracer.catalog.source import locate
from tracer.tui.app import ExplorerApp
from tracer.tui import keys
from tracer.tui.screens import HelpScreen, SourcePane, SourceScreen
from tracer.tui.widgets import RequestsTable, WaterfallTable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def shown_lines(widget, width: int | None = None) -> list[str]:
    """A Static's content as the terminal lays it out at the widget's width."""
    width = width or widget.content_region.width
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text().splitlines()


async def open_source(app: ExplorerApp, pilot, request_id: str, hop: str) -> SourceScreen:
    requests = app.query_one("#requests", RequestsTable)
    requests.move_cursor(row=next(i for i, r in enumerate(requests.requests) if r.request_id == request_id))
    table = app.query_one("#waterfall", WaterfallTable)
    table.move_cursor(row=next(i for i, r in enumerate(table.rows_shown) if r.span.name == hop))
    await pilot.press("s")
    await pilot.pause()
    assert isinstance(app.screen, SourceScreen)
    return app.screen


async def test_the_footer_and_the_help_read_one_list_that_speaks_of_hops_not_replay():
    app = ExplorerApp.from_paths([engine_run().trace])
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        assert "n next hop" in screen_lines(app)[-1]
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_text = app.screen.text().plain
        assert "replay:" not in help_text  # `servetrace replay` is a command
        for binding in ExplorerApp.BINDINGS:
            assert (binding.tooltip or binding.description) in help_text
        assert ExplorerApp.BINDINGS is keys.MAIN_KEYS  # the one list, beside the other screens' keys


async def test_an_applied_filter_is_shown_and_escape_clears_it():
    run = engine_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("slash", *run.request_ids[1], "enter")
        assert not app.query_one("#filter").display
        assert any(f"filter: {run.request_ids[1]}" in line for line in screen_lines(app))
        await pilot.press("slash", "ctrl+a", "ctrl+k", *"hop:kv.", "enter")
        assert any("hops: kv." in line for line in screen_lines(app))
        await pilot.press("escape")
        assert app.query_one("#requests", RequestsTable).row_count == len(run.request_ids)
        assert not any("filter:" in line or "hops:" in line for line in screen_lines(app))


@pytest.mark.parametrize("which, ours, vllm", [
    ("chat_id", "engine.server:OpenAIServing.create_chat_completion",
     "vllm.entrypoints.openai.chat_completion.serving:OpenAIServingChat.create_chat_completion"),
    ("completion_id", "engine.server:OpenAIServing.create_completion",
     "vllm.entrypoints.openai.completion.serving:OpenAIServingCompletion.create_completion"),
])
async def test_a_request_opens_on_its_own_handler(which, ours, vllm):
    run = http_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=LARGE) as pilot:
        screen = await open_source(app, pilot, getattr(run, which), "http.request")
        for pane, spec in (("#pane-ours", ours), ("#pane-upstream", vllm)):
            title = " ".join(shown_lines(screen.query_one(f"{pane} .pane-title"), 200))
            located = locate(spec)
            assert f"{located.relative_file()}:{located.line}" in title and spec.split(":")[1] in title


async def test_at_80_columns_paths_stay_on_one_line_and_code_lines_end_with_an_ellipsis():
    run = http_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SMALL) as pilot:
        screen = await open_source(app, pilot, run.chat_id, "http.request")
        for pane in screen.query(SourcePane):
            view = pane.view
            title = pane.query_one(".pane-title")
            lines = shown_lines(title)
            where = f"{Path(view.file).name}:{view.line}"
            (line,) = [line.strip() for line in lines if where in line]
            assert line.endswith(where) and (line == view.where or line.startswith("…"))
            code = pane.query_one(".code")
            width = pane.content_width()
            rendered = code.content.plain.splitlines()
            source = view.source.splitlines()
            assert len(rendered) == len(source)
            cut = [r for r, s in zip(rendered, source) if len(s.expandtabs(4)) + 8 > width]
            assert cut and all(r.rstrip().endswith("…") for r in cut)
            assert all(len(r) <= width for r in rendered)


async def test_right_and_left_move_both_code_panes_together():
    run = http_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SMALL) as pilot:
        screen = await open_source(app, pilot, run.chat_id, "http.request")
        panes = list(screen.query(SourcePane))
        before = [p.query_one(".code").content.plain for p in panes]
        await pilot.press("right")
        after = [p.query_one(".code").content.plain for p in panes]
        assert all(a != b for a, b in zip(after, before)), "both panes moved"
        assert all(p.column == panes[0].column > 0 for p in panes)
        await pilot.press("left")
        assert [p.query_one(".code").content.plain for p in panes] == before


@pytest.mark.parametrize("size, hop", [(SMALL, "http.request"), (LARGE, "scheduler.schedule")])
async def test_the_hops_notes_are_shown_whole(size, hop):
    """Two walkthrough notes on scheduler.schedule fill more than 5 lines at 160 columns too."""
    run = http_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=size) as pilot:
        screen = await open_source(app, pilot, run.chat_id, hop)
        header = screen.query_one("#source-header")
        needed = shown_lines(header)
        assert len(needed) > 5
        assert header.content_region.height >= len(needed), "every line of the notes laid out, none cut"
        box = screen.query_one("#source-header-box")
        assert box.max_scroll_y == max(0, len(needed) - box.scrollable_content_region.height)
