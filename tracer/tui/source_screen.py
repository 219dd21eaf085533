"""The source pane: our engine's code for a hop beside vLLM's or SGLang's, with the walkthrough note.

Code lines are laid out for the pane's width: a line longer than the pane ends with an ellipsis
(and starts with one when scrolled right), and left / right move both panes together, so the two
engines' code stays side by side at the same column.
"""
from __future__ import annotations

from rich.style import Style
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, ScrollableContainer, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from tracer.tui.keys import SOURCE_KEYS
from tracer.tui.sources import SourceView, hop_meaning, hop_sources, our_engines, upstream_engines
from tracer.tui.walkthroughs import Note, notes_for

SYNTAX_THEME = "monokai"
SCROLL_COLUMNS = 8  # columns a left / right press moves the code
MARKER = "❱"  # the target's first line


def fit_path(path: str, width: int) -> str:
    """A path (or a qualified name) on one line of `width`: whole, else its end (the file and
    line; the method) after an ellipsis."""
    return path if len(path) <= width else "…" + path[len(path) - width + 1:]


def code_lines(view: SourceView, width: int, offset: int) -> list[Text]:
    """The view's source, highlighted, each line `width` cells: line number, then the code from
    column `offset`; a line cut at either edge shows an ellipsis there."""
    source = view.source.rstrip("\n").expandtabs(4)
    theme = Syntax.get_theme(SYNTAX_THEME)
    background = theme.get_background_style()
    highlighted = Syntax(source, "python", theme=SYNTAX_THEME).highlight(source)
    lines = highlighted.split("\n", allow_blank=True)[:len(source.splitlines())]  # highlight() ends with a newline
    number_width = len(str(view.line + len(lines) - 1))
    gutter = len(MARKER) + 1 + number_width + 1
    room = max(1, width - gutter)
    out = []
    for index, line in enumerate(lines):
        number = view.line + index
        here = number == view.line
        row = Text(end="", style=background)
        row.append(f"{MARKER if here else ' '} {number:>{number_width}} ",
                   style=Style(color="red", bold=True) if here else Style(dim=True))
        body = line[offset:] if offset else line
        if offset and line.cell_len > offset:
            body = Text("…", style=Style(dim=True)) + body[1:]
        if body.cell_len > room:
            body = body[:room - 1] + Text("…", style=Style(dim=True))
        row.append_text(body)
        row.pad_right(max(0, width - row.cell_len))
        out.append(row)
    return out


class SourcePane(Vertical):
    """One engine's target for the hop, highlighted at its installed file:line."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view: SourceView | None = None
        self.column = 0

    def compose(self) -> ComposeResult:
        yield Static(classes="pane-title")
        with ScrollableContainer():
            yield Static(classes="code")

    def show(self, engine: str, views: tuple[SourceView, ...], index: int) -> None:
        title, code = self.query_one(".pane-title", Static), self.query_one(".code", Static)
        if not views:
            self.view = None
            known = bool(hop_meaning(self.screen.hop)) if hasattr(self.screen, "hop") else True
            message = (f"{engine}: this hop has no target in this engine" if known
                       else f"{self.screen.hop} is not a catalog hop (a span of the engine's own tracing): no code to show")
            title.update(Text(message, style="dim"))
            code.update("")
            return
        view = views[index % len(views)]
        self.view = view
        counter = f" [{index % len(views) + 1}/{len(views)}]" if len(views) > 1 else ""
        width = self.query_one(".pane-title", Static).content_region.width or self.content_width() - 2
        # Engine and version, then the path on a line of its own (never split: its end is what
        # says the file and line), then the function; notes wrap below.
        heading = Text(f"{view.engine}{' ' + view.version if view.version else ''}{counter}", style="bold")
        if not view.live:
            heading.append("  (replay only)", style="dim")
        if view.file:
            heading.append("\n" + fit_path(view.where, width), style="bold")
        heading.append("\n" + fit_path(view.spec.split(":", 1)[-1], width), style="bold")
        if view.version_note:
            heading.append(f"\n{view.version_note}", style="yellow")
        if view.note:
            heading.append(f"\n{view.note}", style="italic dim")
        title.update(heading)
        if view.error:
            code.update(Text(view.error, style="red"))
            return
        self.draw_code()

    def content_width(self) -> int:
        width = self.query_one(ScrollableContainer).scrollable_content_region.width
        return width if width > 0 else 38  # before the first layout: half of 80 columns

    def draw_code(self) -> None:
        view = self.view
        if view is None or view.error:
            return
        self.query_one(".code", Static).update(Text("\n").join(code_lines(view, self.content_width(), self.column)))

    def widest_line(self) -> int:
        return max((len(line.expandtabs(4)) for line in self.view.source.splitlines()), default=0) if self.view else 0

    def on_resize(self) -> None:
        refresh = getattr(self.screen, "refresh_panes", None)
        if self.view is not None and refresh is not None:  # the title's path and code lines fit the width
            refresh()


class SourceScreen(Screen):
    """Our engine's code for the hop beside vLLM's or SGLang's, with the walkthrough note.
    `operation`: the request's (chat, text_completion): a hop with one target per operation
    opens on that one (a chat request on the chat handler). `mode`: the trace's engine mode (ours in
    cache_mode sglang): our pane opens on the target of that mode (SglangScheduler.schedule, not
    Scheduler.schedule), and one of another mode is never the first shown."""

    BINDINGS = SOURCE_KEYS

    def __init__(self, hop: str, upstream: str | None = None, version: str = "", operation: str = "", mode: str = "") -> None:
        super().__init__()
        self.hop = hop
        self.operation = operation
        self.mode = mode
        # The trace's engine and version (its resource's): that engine's pane shows that version's code.
        self.recorded = (upstream, version) if upstream and version else None
        # Ours on the left, an upstream engine on the right: both lists are the catalog's.
        self.ours = next(iter(our_engines()), "")
        self.upstreams = upstream_engines()
        self.upstream = upstream if upstream in self.upstreams else next(iter(self.upstreams), "")
        self.target_index = 0
        self.column = 0

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="source-header-box"):
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

    def notes(self) -> list[Note]:
        """The hop's walkthrough notes about every engine and about the two panes' engines: ours and
        the upstream beside it (for a mini-sglang trace SGLang, whom the catalog's mode mirrors), so a
        trace read with SGLang's logic is not annotated with vLLM's mechanism."""
        return [note for note in notes_for(self.hop) if note.engine in (None, self.ours, self.upstream)]

    def header_text(self) -> Text:
        header = Text(self.hop, style="bold")
        meaning = hop_meaning(self.hop)
        if meaning:
            header.append(f": {meaning}")
        for note in self.notes():
            engine = f", {note.engine}" if note.engine else ""
            header.append(f"\n{note.title} ({note.walkthrough}{engine}): ", style="bold cyan")
            header.append(note.text)
        return header

    def show_hop(self) -> None:
        self.query_one("#source-header", Static).update(self.header_text())
        self.refresh_panes()

    def first_target(self, views: tuple[SourceView, ...]) -> int:
        """The target serving the request's operation, else the first of the trace's mode (a target
        of no mode where the hop has none of it)."""
        found = next((i for i, v in enumerate(views) if self.operation and v.operation == self.operation), None)
        if found is not None:
            return found
        fits = [i for i, v in enumerate(views) if v.mode == self.mode] or [i for i, v in enumerate(views) if not v.mode]
        return fits[0] if fits else 0

    def refresh_panes(self) -> None:
        sources = hop_sources(self.hop, self.recorded)
        for pane_id, engine in (("#pane-ours", self.ours), ("#pane-upstream", self.upstream)):
            views = sources.get(engine, ())
            pane = self.query_one(pane_id, SourcePane)
            pane.column = self.column
            pane.show(engine, views, self.first_target(views) + self.target_index)

    def action_other_engine(self) -> None:
        if self.upstreams:
            self.upstream = self.upstreams[(self.upstreams.index(self.upstream) + 1) % len(self.upstreams)]
            self.show_hop()  # the notes follow the engine beside ours

    def action_next_target(self) -> None:
        self.target_index += 1
        self.refresh_panes()

    def action_scroll_code(self, direction: int) -> None:
        """Both panes sideways by SCROLL_COLUMNS, as far as the wider pane's longest line needs."""
        panes = list(self.query(SourcePane))
        widest = max((pane.widest_line() - pane.content_width() + 8 for pane in panes), default=0)
        self.column = min(max(self.column + direction * SCROLL_COLUMNS, 0), max(widest, 0))
        for pane in panes:
            pane.column = self.column
            pane.draw_code()
