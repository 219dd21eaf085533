"""The compare screen as `make demo` opens it, at 80x24: two replays of one engine whose files
share a name (replay/ vs replay-uncached/), a legend for the cells, the diff column whole, the
end of the differences said without covering the values; replay traces time requests in steps."""
from __future__ import annotations

import shutil

import pytest

from tests.test_tui_panels import SMALL, screen_lines
from tests.test_tui_traces import engine_run, replay_run
from tracer.tui.app import ExplorerApp
from tracer.tui.screens import CompareScreen
from tracer.tui.loader import load_trace
from tracer.tui.model import build_model
from tracer.tui.summary import print_summary
from tracer.tui.widgets import RequestsTable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def same_names(tmp_path):
    """vLLM with and without prefix caching, each written as trace-vllm.jsonl in its own folder."""
    run = replay_run()
    paths = []
    for folder, source in (("replay", run.vllm), ("replay-uncached", run.vllm_no_prefix_cache)):
        (tmp_path / folder).mkdir()
        paths.append(shutil.copy(source, tmp_path / folder / "trace-vllm.jsonl"))
    return paths


def table_lines(app) -> list[str]:
    """The step table's lines on screen: from its header to the rule over the detail."""
    lines = screen_lines(app)
    top = next(i for i, line in enumerate(lines) if line.lstrip().startswith("step "))
    bottom = next(i for i in range(top, len(lines)) if lines[i].startswith("──"))
    return lines[top:bottom]


async def test_two_files_of_one_name_get_labels_that_differ_where_they_show(same_names):
    app = ExplorerApp.from_paths(same_names)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert screen.left_name != screen.right_name
        assert "replay/" in screen.left_name and "replay-uncached/" in screen.right_name
        table = screen.query_one("#compare-table")
        left, right = (table.columns[key] for key in ("left", "right"))
        assert left.label.plain[:left.width] != right.label.plain[:right.width], "the column headers differ as shown"


async def test_the_cells_have_a_legend(same_names):
    app = ExplorerApp.from_paths(same_names)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("c")
        text = " ".join(" ".join(screen_lines(app)).split())
        assert "request:tokens" in text and "request:prefix-cache hit tokens" in text


async def test_the_diff_column_shows_every_differing_field_whole(same_names):
    app = ExplorerApp.from_paths(same_names)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("c", "g")
        screen = app.screen
        pair = screen.comparison.pairs[screen.comparison.first_divergence]
        assert len(pair.differing) >= 3
        shown = " ".join(table_lines(app))
        for name in pair.differing:
            assert name in shown.replace(",", " ").split(), f"{name} cut from the diff column"


async def test_the_end_of_the_differences_is_said_without_a_toast_over_the_values(same_names):
    app = ExplorerApp.from_paths(same_names)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("c")
        screen = app.screen
        last = screen.comparison.divergent[-1]
        screen.query_one("#compare-table").move_cursor(row=last)
        await pilot.pause()
        detail_before = screen_lines(app)[-4:-1]
        await pilot.press("n")
        await pilot.pause()
        assert not app._notifications, "no toast"
        assert any("no further difference" in line for line in screen_lines(app))
        assert screen.query_one("#compare-table").cursor_row == last
        assert screen_lines(app)[-4:-1] == detail_before, "the detail's values stay in view"
        await pilot.press("g")
        assert not any("no further difference" in line for line in screen_lines(app))


async def test_a_replay_trace_counts_ttft_and_latency_in_steps():
    run = replay_run()
    model = build_model(load_trace(run.mini))
    assert not model.ran_model and build_model(load_trace(engine_run().trace)).ran_model
    app = ExplorerApp.from_paths([run.mini, engine_run().trace])
    async with app.run_test(size=SMALL) as pilot:
        table = app.query_one("#requests", RequestsTable)
        for index, request in enumerate(table.requests):
            cells = [cell.plain for cell in table.row_cells(index)]
            ttft, latency = int(cells[4].split()[0]), int(cells[5].split()[0])
            assert cells[4].endswith(("step", "steps")) and cells[5].endswith(("step", "steps"))
            # The first token no later than the last step; every step it ran in counted in its latency.
            assert 1 <= ttft <= latency and latency >= len(request.steps) >= request.output_tokens
        await pilot.press("x")  # our engine ran the model: milliseconds
        assert table.row_cells(0)[4].plain.endswith("ms")


def test_the_summary_without_a_terminal_counts_replay_steps_too(capsys):
    print_summary([replay_run().mini])
    out = capsys.readouterr().out
    assert " steps " in out or " step " in out
    assert " ms " not in out
