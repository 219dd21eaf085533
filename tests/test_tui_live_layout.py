"""`servetrace tui --listen` is laid out for a full window from the start
(tracer.tui.live.LIVE_CSS): a model swapped in changes no widget's size, so it does not lay the
screen out again (tens of ms), which a key pressed meanwhile would wait for."""
from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest
from textual.widgets import Header, Static

from tracer.commands._ports import listen
from tracer.traces.receiver import start_receiver
from tracer.tui.app import ExplorerApp
from tracer.tui.live import LiveExplorerApp, LiveWindow
from tracer.tui.widgets import RequestsTable

SAMPLE = Path(__file__).parent / "data" / "live-vllm.jsonl"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def post(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/v1/traces", body, {"Content-Type": "application/json"})
    return connection.getresponse().status


async def layouts_counted(app_class: type[LiveExplorerApp]) -> tuple[list[int], int]:
    """Screen layouts from each model swap to the next, from the empty window to the sample's
    five requests (one swap or several: lines arriving apart are built apart); then those of
    keys that move through the requests and their hops."""
    receiver = start_receiver(listen("127.0.0.1", 0, "--listen"))
    app = app_class(receiver, LiveWindow(limit=50), rebuild_s=0.1)
    layouts: list[float] = []
    swaps: list[float] = []
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            refresh_layout, swap = app.screen._refresh_layout, app.swap_model

            def counted_layout(*args, **kwargs):
                layouts.append(time.perf_counter())
                return refresh_layout(*args, **kwargs)

            def counted_swap(prepared):
                swaps.append(time.perf_counter())
                return swap(prepared)

            app.screen._refresh_layout, app.swap_model = counted_layout, counted_swap
            lines = SAMPLE.read_bytes().splitlines()
            for wanted, batch in ((1, lines[:-1]), (2, lines[-1:])):
                for line in batch:
                    assert post(receiver.address[1], line) == 200
                deadline = time.monotonic() + 10
                while len(swaps) < wanted and time.monotonic() < deadline:
                    await pilot.pause(0.05)
                await pilot.pause(0.5)  # the swap's refreshes, and any layout they ask for
            assert app.query_one("#requests", RequestsTable).row_count == 5
            title = str(app.query_one(Header).query_one("HeaderTitle", Static).render())
            assert app.sub_title == app.trace_line(app.model) and app.sub_title in title  # drawn, laid out or not
            before_keys = len(layouts)
            for key in ("down", "n", "n", "up", "n", "end", "home"):
                await pilot.press(key)
                await pilot.pause()
            assert app.models_shown == len(swaps)  # no swap among the keys
            keys = len(layouts) - before_keys
    finally:
        receiver.stop()
    edges = [*swaps, float("inf")]
    return [sum(edges[i] <= t < edges[i + 1] for t in layouts[:before_keys]) for i in range(len(swaps))], keys


async def test_no_swap_lays_out_the_screen_while_the_window_fills_nor_any_key():
    """The tables, laid out for a full window, keep their sizes; their scrollbars are always
    shown, so a swap or a key that changes how many lines they hold lays out nothing
    (tracer.tui.rowtable.set_virtual_size); the header's counts and the warning line are
    redrawn in place (LiveExplorerApp._show_sub_title, _show_notice)."""
    per_swap, keys = await layouts_counted(LiveExplorerApp)
    assert per_swap == [0] * len(per_swap) and keys == 0


async def test_laid_out_as_for_a_trace_file_a_swap_lays_out_again_and_again():
    """What LIVE_CSS is for: laid out as for a trace file, the first models grow the requests
    table and show the waterfall's and the side panel's scrollbars, and the screen is laid out
    once more for each round of resizes that follows."""

    class AsIfStatic(LiveExplorerApp):
        CSS = ExplorerApp.CSS

    per_swap, keys = await layouts_counted(AsIfStatic)
    assert max(per_swap) >= 2
