"""The compare screen: two traces of one workload, step by step (tracer.tui.compare aligns them)."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tracer.tui.compare import FIELDS, Comparison, StepPair
from tracer.tui.keys import COMPARE_KEYS
from tracer.tui.widgets import title_of


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
        self.left_name = comparison.left.engine or title_of(comparison.left)
        self.right_name = comparison.right.engine or title_of(comparison.right)
        if self.left_name == self.right_name:
            self.left_name, self.right_name = title_of(comparison.left), title_of(comparison.right)

    def compose(self) -> ComposeResult:
        yield Static(id="compare-summary")
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
        side = max(12, (self.app.size.width - 30) // 2)
        table.add_column("step", key="step", width=4)
        table.add_column(self.left_name, key="left", width=side)
        table.add_column(self.right_name, key="right", width=side)
        table.add_column("diff", key="diff")
        for pair in comparison.pairs:
            style = "" if pair.agree else "red"
            table.add_row(Text(str(pair.index + 1), justify="right", style=style),
                          Text(_batch_text(pair.left_fields), style=style),
                          Text(_batch_text(pair.right_fields), style=style),
                          Text(",".join(pair.differing) or "=", style="bold red" if style else "dim green"))
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

    def _move_to(self, index: int | None) -> None:
        if index is None:
            self.notify("no further difference", timeout=2)
            return
        self.query_one("#compare-table", DataTable).move_cursor(row=index)

    def action_first_divergence(self) -> None:
        self._move_to(self.comparison.first_divergence)

    def action_next_divergence(self) -> None:
        self._move_to(self.comparison.next_divergence(self.query_one("#compare-table", DataTable).cursor_row))

    def action_previous_divergence(self) -> None:
        table = self.query_one("#compare-table", DataTable)
        self._move_to(self.comparison.next_divergence(table.cursor_row, backwards=True))


def _fmt(item: object) -> str:
    if isinstance(item, dict):
        return " ".join(f"{k}:{v}" for k, v in item.items()) or "{}"
    if isinstance(item, list):
        return " ".join(map(str, item)) or "[]"
    return str(item)
