"""The compare screen: two traces of one workload, step by step (tracer.tui.compare aligns them)."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tracer.tui.compare import FIELDS, Comparison, StepPair
from tracer.tui.keys import COMPARE_KEYS
from tracer.tui.model import TraceModel
from tracer.tui.widgets import title_of

# What a cell says: the replay's step-by-step record, read the way tracer.tui.compare compares it.
LEGEND = ("cells: request:tokens the step scheduled for it · cached: request:prefix-cache hit tokens"
          " · = the step agrees")
DIFF_WIDTH = 22  # the diff column's most; longer lists wrap onto a second line of the row


def trace_labels(left: TraceModel, right: TraceModel) -> tuple[str, str]:
    """The two traces' names: their engines; where those are alike, the files, with as many of
    their folders as it takes to tell two files of one name apart (replay/ vs replay-uncached/)."""
    names = left.engine_label or title_of(left), right.engine_label or title_of(right)
    if names[0] != names[1]:
        return names
    a, b = Path(left.path).resolve().parts, Path(right.path).resolve().parts
    depth = 1
    while depth < min(len(a), len(b)) and a[-depth:] == b[-depth:]:
        depth += 1
    engine = f" ({left.engine_label})" if left.engine_label and left.engine_label == right.engine_label else ""
    return "/".join(a[-depth:]) + engine, "/".join(b[-depth:]) + engine


def _batch_text(fields: dict, limit: int = 6) -> str:
    batch = fields.get("batch")
    if batch is None:
        return "-" if not fields else "(no batch)"
    items = [f"{rid}:{n}" for rid, n in list(batch.items())[:limit]]
    more = f" +{len(batch) - limit}" if len(batch) > limit else ""
    return " ".join(items) + more


class CompareScreen(Screen):
    """Two traces of one workload, step by step; differing steps in red."""

    BINDINGS = COMPARE_KEYS

    def __init__(self, comparison: Comparison) -> None:
        super().__init__()
        self.comparison = comparison
        self.left_name, self.right_name = trace_labels(comparison.left, comparison.right)

    def compose(self) -> ComposeResult:
        yield Static(id="compare-summary")
        yield Static(Text(LEGEND, style="dim"), id="compare-legend")
        # Where n / p say there is no further difference: a line of its own, not a toast that
        # would cover the detail's values.
        yield Static(id="compare-status")
        yield DataTable(id="compare-table", cursor_type="row")
        with VerticalScroll(id="compare-detail-box"):
            yield Static(id="compare-detail")
        yield Footer()

    def on_mount(self) -> None:
        comparison = self.comparison
        line, agree = comparison.verdict(self.left_name, self.right_name)
        summary = Text(line, style="green" if agree else "bold red")
        self.query_one("#compare-summary", Static).update(summary)
        table = self.query_one("#compare-table", DataTable)
        diffs = [_diff_text(pair) for pair in comparison.pairs]
        diff_width = min(DIFF_WIDTH, max([len("diff"), *map(len, diffs)]))
        # What is left after the step and diff columns, their padding and the scrollbar.
        side = max(12, (self.app.size.width - 4 - diff_width - 4 * 2 - 2) // 2)
        table.add_column("step", key="step", width=4)
        table.add_column(self.left_name, key="left", width=side)
        table.add_column(self.right_name, key="right", width=side)
        table.add_column("diff", key="diff", width=diff_width)
        for pair, diff in zip(comparison.pairs, diffs):
            style = "" if pair.agree else "red"
            table.add_row(Text(str(pair.index + 1), justify="right", style=style),
                          Text(_batch_text(pair.left_fields), style=style, no_wrap=True, overflow="ellipsis"),
                          Text(_batch_text(pair.right_fields), style=style, no_wrap=True, overflow="ellipsis"),
                          Text(diff, style="bold red" if style else "dim green"),
                          height=None)  # a diff wider than its column wraps: the row grows, nothing is cut
        table.focus()
        self.show_pair(0)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_pair(event.cursor_row)

    def show_pair(self, index: int) -> None:
        if not self.comparison.pairs:
            return
        pair: StepPair = self.comparison.pairs[index]
        grid = Table(box=None, padding=(0, 1), expand=True, show_edge=False)
        grid.add_column(f"step {pair.index + 1}", style="bold", no_wrap=True)
        grid.add_column(self.left_name)
        grid.add_column(self.right_name)
        names = list(FIELDS) + [n for n in pair.differing if n not in FIELDS]
        for name in names:
            left, right = pair.left_fields.get(name, "-"), pair.right_fields.get(name, "-")
            if name not in pair.left_fields and name not in pair.right_fields and name != "step":
                continue
            style = "bold red" if name in pair.differing else ""
            grid.add_row(Text(name, style=style), Text(_fmt(left), style=style), Text(_fmt(right), style=style))
        self.query_one("#compare-detail", Static).update(grid)

    def _move_to(self, index: int | None, where: str = "") -> None:
        status = self.query_one("#compare-status", Static)
        status.display = index is None
        if index is None:
            status.update(Text(f"no further difference {where}(g: the first)".replace("  ", " "), style="yellow"))
            return
        self.query_one("#compare-table", DataTable).move_cursor(row=index)

    def action_first_divergence(self) -> None:
        self._move_to(self.comparison.first_divergence)

    def action_next_divergence(self) -> None:
        here = self.query_one("#compare-table", DataTable).cursor_row
        self._move_to(self.comparison.next_divergence(here), f"after step {here + 1} ")

    def action_previous_divergence(self) -> None:
        here = self.query_one("#compare-table", DataTable).cursor_row
        self._move_to(self.comparison.next_divergence(here, backwards=True), f"before step {here + 1} ")


def _diff_text(pair: StepPair) -> str:
    return ", ".join(pair.differing) or "="


def _fmt(item: object) -> str:
    if isinstance(item, dict):
        return " ".join(f"{k}:{v}" for k, v in item.items()) or "{}"
    if isinstance(item, list):
        return " ".join(map(str, item)) or "[]"
    return str(item)
