"""Screens over the main view: source pane, trace comparison, help."""
from __future__ import annotations

from collections.abc import Sequence

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Static

from tracer.tui.compare import FIELDS, Comparison, StepPair
from tracer.tui.keys import TABLE_KEYS, help_section
from tracer.tui.sources import SourceView, hop_meaning, hop_sources, our_engines, upstream_engines
from tracer.tui.walkthroughs import notes_for
from tracer.tui.widgets import title_of

SYNTAX_THEME = "monokai"


class SourcePane(Vertical):
    """One engine's target for the hop, syntax-highlighted at its installed file:line."""

    def compose(self) -> ComposeResult:
        yield Static(classes="pane-title")
        with ScrollableContainer():
            yield Static(classes="code")

    def show(self, engine: str, views: tuple[SourceView, ...], index: int) -> None:
        title, code = self.query_one(".pane-title", Static), self.query_one(".code", Static)
        if not views:
            known = bool(hop_meaning(self.screen.hop)) if hasattr(self.screen, "hop") else True
            message = (f"{engine}: this hop has no target in this engine" if known
                       else f"{self.screen.hop} is not a catalog hop (a span of the engine's own tracing): no code to show")
            title.update(Text(message, style="dim"))
            code.update("")
            return
        view = views[index % len(views)]
        counter = f" [{index % len(views) + 1}/{len(views)}]" if len(views) > 1 else ""
        heading = Text(view.title + counter, style="bold")
        if not view.live:
            heading.append("  (replay only)", style="dim")
        if view.version_note:
            heading.append(f"\n{view.version_note}", style="yellow")
        if view.note:
            heading.append(f"\n{view.note}", style="italic dim")
        title.update(heading)
        if view.error:
            code.update(Text(view.error, style="red"))
            return
        code.update(Syntax(view.source.rstrip("\n"), "python", theme=SYNTAX_THEME, line_numbers=True,
                           start_line=view.line, highlight_lines={view.line}, word_wrap=False))


class SourceScreen(Screen):
    """Our engine's code for the hop beside vLLM's or SGLang's, with the walkthrough note."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "back"),
        Binding("e", "other_engine", "other engine", tooltip="the next upstream engine of the catalog (vLLM, SGLang ...)"),
        Binding("t", "next_target", "next target", tooltip="the hop's next target in these engines"),
        Binding("n", "hop(1)", "next hop", tooltip="the request's next hop, without leaving the source"),
        Binding("p", "hop(-1)", "prev hop", tooltip="the request's previous hop"),
    ]

    def __init__(self, hop: str, upstream: str | None = None, version: str = "") -> None:
        super().__init__()
        self.hop = hop
        # The trace's engine and version (its resource's): that engine's pane shows that version's code.
        self.recorded = (upstream, version) if upstream and version else None
        # Ours on the left, an upstream engine on the right: both lists are the catalog's.
        self.ours = next(iter(our_engines()), "")
        self.upstreams = upstream_engines()
        self.upstream = upstream if upstream in self.upstreams else next(iter(self.upstreams), "")
        self.target_index = 0

    def compose(self) -> ComposeResult:
        yield Static(id="source-header")
        with Horizontal(id="source-panes"):
            yield SourcePane(id="pane-ours")
            yield SourcePane(id="pane-upstream")
        yield Footer()

    def on_mount(self) -> None:
        self.show_hop()

    def action_hop(self, delta: int) -> None:
        """Step through the request's hops without leaving the source."""
        hop = self.app.move_hop(delta)
        if hop is not None and hop != self.hop:
            self.hop, self.target_index = hop, 0
            self.show_hop()

    def show_hop(self) -> None:
        header = Text(self.hop, style="bold")
        meaning = hop_meaning(self.hop)
        if meaning:
            header.append(f": {meaning}")
        for note in notes_for(self.hop):
            header.append(f"\n{note.title} ({note.walkthrough}): ", style="bold cyan")
            header.append(note.text)
        self.query_one("#source-header", Static).update(header)
        self.refresh_panes()

    def refresh_panes(self) -> None:
        sources = hop_sources(self.hop, self.recorded)
        self.query_one("#pane-ours", SourcePane).show(self.ours, sources.get(self.ours, ()), self.target_index)
        self.query_one("#pane-upstream", SourcePane).show(self.upstream, sources.get(self.upstream, ()), self.target_index)

    def action_other_engine(self) -> None:
        if self.upstreams:
            self.upstream = self.upstreams[(self.upstreams.index(self.upstream) + 1) % len(self.upstreams)]
            self.refresh_panes()

    def action_next_target(self) -> None:
        self.target_index += 1
        self.refresh_panes()


def _batch_text(fields: dict, limit: int = 6) -> str:
    batch = fields.get("batch")
    if batch is None:
        return "-" if not fields else "(no batch)"
    items = [f"{rid}:{n}" for rid, n in list(batch.items())[:limit]]
    more = f" +{len(batch) - limit}" if len(batch) > limit else ""
    return " ".join(items) + more


class CompareScreen(Screen):
    """Two traces of one workload, step by step; differing steps in red."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "back"),
        Binding("g", "first_divergence", "first divergence"),
        Binding("n", "next_divergence", "next diff", tooltip="the next step that differs"),
        Binding("p", "previous_divergence", "prev diff", tooltip="the previous step that differs"),
    ]

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
        first = comparison.first_divergence
        if first is None:
            summary = Text(f"{self.left_name} vs {self.right_name}: agree on all {len(comparison.pairs)} steps", style="green")
        else:
            summary = Text(f"{self.left_name} vs {self.right_name}: {len(comparison.divergent)} of {len(comparison.pairs)} "
                           f"steps differ; first at step {first + 1} ({', '.join(comparison.pairs[first].differing)})",
                           style="bold red")
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


HELP_ABOUT = """\
[b]servetrace explorer[/b]: one request from HTTP to the forward pass and back."""
HELP_STATE = """\
The state panel shows the engine after the focused hop: queue lengths, KV
usage, the request's blocks and its matched prefix, read from span attributes."""


class HelpScreen(ModalScreen):
    """Every screen's keys, from their bindings (tracer.tui.keys)."""

    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

    def __init__(self, main_bindings: Sequence[Binding]) -> None:
        super().__init__()
        self.main_bindings = main_bindings

    def text(self) -> Text:
        display = self.app.get_key_display
        sections = [
            Text.from_markup(HELP_ABOUT),
            help_section("Main screen", self.main_bindings, display, TABLE_KEYS),
            help_section("Source pane", SourceScreen.BINDINGS, display),
            help_section("Compare", CompareScreen.BINDINGS, display),
            Text(HELP_STATE),
        ]
        return Text("\n\n").join(sections)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(self.text(), id="help-text")
