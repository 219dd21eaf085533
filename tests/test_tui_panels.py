"""The explorer's main view at the sizes users open it in (80x24, 160x48): the side panel sized
to the terminal and its details readable (numbers formatted, keys whole, values wrapped at
spaces), the waterfall's bars, the header's trace-switch hint, the requests table's height."""
from __future__ import annotations

import pytest

from tests.test_tui_traces import engine_run, http_run
from tracer.traces.schema import KV_USAGE
from tracer.tui.app import ExplorerApp
from tracer.tui.widgets import RequestsTable, SidePanel, WaterfallTable

pytestmark = pytest.mark.anyio
SMALL, LARGE = (80, 24), (160, 48)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def screen_lines(app: ExplorerApp) -> list[str]:
    """What the terminal shows, line by line (the compositor's strips, as plain text)."""
    return ["".join(segment.text for segment in strip) for strip in app.screen._compositor.render_strips()]


def detail_lines(app: ExplorerApp) -> list[str]:
    return app.query_one("#side", SidePanel).details_text().splitlines()


def _pieces(key: str, width: int) -> list[str]:
    pieces = []
    while len(key) > width:
        cut = max(key[:width].rfind("."), key[:width].rfind("_")) + 1
        pieces.append(key[:cut])
        key = key[cut:]
    return pieces + [key]


async def move_to(app: ExplorerApp, pilot, predicate) -> None:
    table = app.query_one("#waterfall", WaterfallTable)
    index = next(i for i, row in enumerate(table.rows_shown) if predicate(row))
    table.move_cursor(row=index)
    await pilot.pause()


@pytest.mark.parametrize("size, least", [(SMALL, 26), (LARGE, 50)])
async def test_the_side_panel_is_sized_to_the_terminal(size, least):
    app = ExplorerApp.from_paths([engine_run().trace])
    async with app.run_test(size=size):
        assert app.query_one("#side", SidePanel).outer_size.width >= least
        assert app.query_one("#waterfall", WaterfallTable).size.width >= size[0] // 2


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_floats_are_formatted_and_keys_are_whole(size):
    app = ExplorerApp.from_paths([engine_run().trace])
    async with app.run_test(size=size) as pilot:
        await move_to(app, pilot, lambda row: isinstance(row.span.attributes.get(KV_USAGE), float)
                      and row.span.attributes[KV_USAGE] * 1000 % 1)  # a usage with more digits than a percent shows
        span = app.query_one("#waterfall", WaterfallTable).current().span
        text = "\n".join(detail_lines(app))
        usage = span.attributes[KV_USAGE]
        assert f"{usage:.1%}" in text and str(usage) not in text
        assert "…" not in text
        keys = {key.removeprefix("servetrace.").removeprefix("gen_ai.") for key in span.attributes}
        text = "\n".join(line.strip() for line in detail_lines(app))
        width = app.query_one("#side", SidePanel).scrollable_content_region.width
        for key in keys:
            # Whole on its line; a key wider than the whole panel broken after a dot or underscore.
            pieces = [key] if len(key) <= width else _pieces(key, width)
            assert "\n".join(pieces) in text, f"{key} is cut"


async def test_a_long_error_message_wraps_at_spaces_in_a_few_lines():
    run = http_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SMALL) as pilot:
        requests = app.query_one("#requests", RequestsTable)
        refused = next(i for i, r in enumerate(requests.requests) if r.status == "error")
        requests.move_cursor(row=refused)
        await pilot.pause()
        span = app.query_one("#waterfall", WaterfallTable).current().span
        assert run.refused_model in span.status_message
        lines = detail_lines(app)
        start = next(i for i, line in enumerate(lines) if line.startswith("status"))
        shown = [lines[start].removeprefix("status").strip()] if lines[start].strip() != "status" else []
        for line in lines[start + 1:]:
            if not line.startswith(" "):
                break
            shown.append(line.strip())
        assert 1 < len(shown) <= 8
        message = f"{span.status} {span.status_message}"
        assert "".join(shown).replace(" ", "") == message.replace(" ", ""), "all of it, in order"
        for line, following in zip(shown, shown[1:]):

            broke_at_space = f"{line} {following}" in message
            assert broke_at_space or line[-1] in "-_/.:,;=)]}", f"{line!r} | {following!r}: cut mid-word"


async def test_at_80_columns_the_waterfall_bars_tell_the_hops_apart():
    app = ExplorerApp.from_paths([engine_run().trace])
    async with app.run_test(size=SMALL):
        table = app.query_one("#waterfall", WaterfallTable)
        assert table.bar_width() > 10
        bars = {table.row_cells(i)[-1].plain for i in range(min(table.row_count, 16))}
        assert len(bars) >= 6


async def test_at_80_columns_the_header_keeps_the_trace_switch_hint():
    app = ExplorerApp.from_paths([engine_run().trace, http_run().trace])
    async with app.run_test(size=SMALL):
        assert "x switches" in screen_lines(app)[0]


async def test_a_one_request_trace_leaves_no_blank_rows_under_it():
    run = engine_run()
    app = ExplorerApp.from_paths([run.trace])
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("slash", *run.request_ids[0], "enter")
        table = app.query_one("#requests", RequestsTable)
        assert table.row_count == 1
        lines = screen_lines(app)
        top = table.region.y
        assert run.request_ids[0] in lines[top + 1]
        border = lines[top + 2].strip()
        assert border.startswith("─"), "the table's border follows its one row"
