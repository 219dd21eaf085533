"""The main screen's side panel: the engine state and the focused span's details.

The two tables (requests, waterfall) live in tracer.tui.tables and are re-exported here."""
from __future__ import annotations

from rich.console import Console
from rich.segment import Segment
from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tracer.traces.schema import LINK_KIND
from tracer.tui.format import count, ms, value
from tracer.tui.model import TraceModel
from tracer.tui.rowtable import set_virtual_size
from tracer.tui.sources import hop_meaning
from tracer.tui.tables import STATUS_STYLES, RequestsTable, WaterfallTable
from tracer.tui.timeline import HopRow

__all__ = ["RequestsTable", "STATUS_STYLES", "SidePanel", "WaterfallTable", "detail_lines", "state_lines", "title_of"]

MAX_BATCH_SHOWN = 8


class Grid:
    """Label / value rows laid out as Text for a known width: what a two-column Rich
    Table.grid draws (labels as wide as the widest, values wrapped under their own column),
    at a fraction of the cost (the panels are redrawn on every keystroke)."""

    MIN_VALUE_WIDTH = 10

    def __init__(self, label_style: str) -> None:
        self.label_style = label_style
        self.rows: list[tuple[str, Text]] = []

    def add_row(self, label: str, item: str | Text) -> None:
        self.rows.append((label, item if isinstance(item, Text) else Text(item)))

    def lines(self, console: Console, width: int) -> list[Text]:
        if not self.rows:
            return []
        # Labels as wide as the widest, unless that leaves values too little room: then longer
        # labels are cut (an attribute key can be longer than the panel is wide).
        label_width = max(1, min(max(len(label) for label, _ in self.rows), width - 1 - self.MIN_VALUE_WIDTH))
        value_width = max(1, width - label_width - 1)
        out = []
        for label, item in self.rows:
            parts = item.wrap(console, value_width) if item.cell_len > value_width or "\n" in item.plain else [item]
            for index, part in enumerate(parts):
                shown = label if len(label) <= label_width else label[:label_width - 1] + "…"
                line = Text(end="")
                if index == 0:
                    line.append(shown.ljust(label_width), style=self.label_style)
                else:
                    line.append(" " * label_width)
                line.append(" ")
                line.append_text(part)
                out.append(line)
        return out


def state_lines(row: HopRow | None, position: tuple[int, int], request_id: str, console: Console,
                width: int) -> list[Text]:
    """The engine as it stood after the focused hop (replay)."""
    if row is None:
        return [Text("no hop selected", style="dim")]
    state = row.state
    table = Grid(label_style="bold")
    table.add_row("hop", f"{position[0]} of {position[1]}" + (f" · step {state.step}" if state.step is not None else ""))
    table.add_row("queues", f"{count(state.num_running)} running, {count(state.num_waiting)} waiting")
    usage = "-" if state.kv_usage is None else f"{state.kv_usage:.1%}"
    table.add_row("KV", f"{usage} used, {count(state.free_blocks)} free")
    blocks = "freed" if state.freed else (", ".join(map(str, state.blocks)) or "-")
    table.add_row("blocks", Text(value(f"{blocks}" + (f" ({len(state.blocks)})" if state.blocks else ""), 90)))
    table.add_row("prefix", f"{count(state.matched_prefix)} cached tokens")
    table.add_row("computed", f"{count(state.computed_tokens)} tokens")
    if state.preemptions:
        table.add_row("preempted", Text(f"{state.preemptions}x", style="red"))
    if state.batch:
        parts = [Text(f"{rid}:{n}", style="bold reverse" if rid == request_id else "") for rid, n in state.batch[:MAX_BATCH_SHOWN]]
        batch = Text(" ").join(parts)
        if len(state.batch) > MAX_BATCH_SHOWN:
            batch.append(f" +{len(state.batch) - MAX_BATCH_SHOWN}")
        table.add_row("batch", batch)
    return table.lines(console, width)


def detail_lines(row: HopRow | None, origin_ns: int, console: Console, width: int) -> list[Text]:
    """The focused span: hop meaning, timing, attributes, events, links."""
    if row is None:
        return []
    span = row.span
    heading = Text(span.name, style="bold cyan")
    meaning = hop_meaning(span.name)
    if meaning:
        heading.append(f"\n{meaning}", style="italic")
    table = Grid(label_style="cyan")
    table.add_row("at", f"+{ms(span.start_ns - origin_ns)} for {ms(span.duration_ns)}")
    if span.status != "UNSET":
        table.add_row("status", Text(f"{span.status} {span.status_message}".strip(), style="red" if span.status == "ERROR" else ""))
    for key, item in span.attributes.items():
        short = key.removeprefix("servetrace.").removeprefix("gen_ai.")  # the namespaces, not keys
        table.add_row(short, value(item))
    for event in span.events:
        attributes = ", ".join(f"{k}={value(v, 40)}" for k, v in event.attributes.items())
        table.add_row("event", f"+{ms(event.time_ns - origin_ns)} {event.name} {attributes}".rstrip())
    if span.links:
        kinds: dict[str, int] = {}
        for link in span.links:
            kind = str(link.attributes.get(LINK_KIND, "link"))
            kinds[kind] = kinds.get(kind, 0) + 1
        table.add_row("links", ", ".join(f"{n} to {kind}" for kind, n in kinds.items()))
    return [*heading.wrap(console, width), *table.lines(console, width)]


class SidePanel(ScrollView, can_focus=True):
    """The engine state at the focused hop, a rule, then the hop's details; one scroll.

    Drawn line by line (Textual's Line API, as the tables are): a hop move changes the lines
    and the scroll height, never the screen's layout. (Two Static widgets in a scrolling
    container re-laid out the screen whenever a hop had more detail lines than any before,
    and the resizes that followed cost two more frames: about 60 ms for that keystroke.)"""

    COMPONENT_CLASSES = {"sidepanel--rule"}
    DEFAULT_CSS = """
    SidePanel {
        overflow-x: hidden;
        overflow-y: auto;
        & > .sidepanel--rule {
            color: $primary-background;
        }
    }
    """
    STATE_HEIGHT = 9  # lines kept for the state, so the rule and the details never move

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state: list[Text] = []
        self.details: list[Text] = []
        self._shown: tuple | None = None
        self._strips: dict[int, Strip] = {}

    def show(self, row: HopRow | None, position: tuple[int, int], request_id: str, origin_ns: int) -> None:
        self._shown = (row, position, request_id, origin_ns)
        console, width = self.app.console, self._width()
        self.state = state_lines(row, position, request_id, console, width)[:self.STATE_HEIGHT]
        self.details = detail_lines(row, origin_ns, console, width)
        self._strips.clear()
        set_virtual_size(self, Size(width, self.STATE_HEIGHT + 1 + len(self.details)))
        self.refresh()

    def state_text(self) -> str:
        return "\n".join(line.plain for line in self.state)

    def details_text(self) -> str:
        return "\n".join(line.plain for line in self.details)

    def _width(self) -> int:
        width = self.scrollable_content_region.width
        return width if width > 0 else 25  # before the first layout: the side panel's usual width

    def on_resize(self) -> None:
        if self._shown is not None:
            self.show(*self._shown)  # lines are wrapped to the width

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        index = y + round(self.scroll_offset.y)
        strip = self._strips.get(index)
        if strip is None:
            strip = self._strips[index] = self._draw(index, self._width())
        return strip

    def _draw(self, index: int, width: int) -> Strip:
        base = self.rich_style
        if index < self.STATE_HEIGHT:
            text = self.state[index] if index < len(self.state) else Text("")
        elif index == self.STATE_HEIGHT:
            text = Text("─" * width)
            base += self.get_component_rich_style("sidepanel--rule")
        else:
            details = self.details
            text = details[index - self.STATE_HEIGHT - 1] if index - self.STATE_HEIGHT - 1 < len(details) else Text("")
        segments = Segment.apply_style(text.render(self.app.console), base)
        return Strip(segments).extend_cell_length(width, base).crop(0, width).simplify()


def title_of(model: TraceModel) -> str:
    from pathlib import Path

    engine = f" ({model.engine})" if model.engine else ""
    return f"{Path(model.path).name}{engine}"
