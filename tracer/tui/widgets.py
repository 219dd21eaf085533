"""The main screen's side panels: the engine state and the focused span's details.

The two tables (requests, waterfall) live in tracer.tui.tables and are re-exported here."""
from __future__ import annotations

from rich.console import Console
from rich.text import Text
from textual.widgets import Static

from tracer.tui.format import count, ms, value
from tracer.tui.model import TraceModel
from tracer.tui.sources import hop_meaning
from tracer.tui.tables import STATUS_STYLES, RequestsTable, WaterfallTable
from tracer.tui.timeline import HopRow

__all__ = ["DetailsPanel", "RequestsTable", "STATUS_STYLES", "StatePanel", "WaterfallTable", "title_of"]

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


def _joined(lines: list[Text]) -> Text:
    return Text("\n", end="").join(lines)


def _width_of(widget: Static) -> int:
    width = widget.content_region.width
    return width if width > 0 else 28  # before the first layout: the side panel's usual width


class StatePanel(Static):
    """The engine as it stood after the focused hop (replay). Its height is fixed (CSS), so
    updates skip the screen re-layout."""

    def show(self, row: HopRow | None, position: tuple[int, int], request_id: str) -> None:
        if row is None:
            self.update(Text("no hop selected", style="dim"), layout=False)
            return
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
        self.update(_joined(table.lines(self.app.console, _width_of(self))), layout=False)


class DetailsPanel(Static):
    """The focused span: hop meaning, timing, attributes, events, links."""

    _lines = 0

    def show(self, row: HopRow | None, origin_ns: int) -> None:
        if row is None:
            self.update("")
            return
        span = row.span
        console, width = self.app.console, _width_of(self)
        heading = Text(span.name, style="bold cyan")
        meaning = hop_meaning(span.name)
        if meaning:
            heading.append(f"\n{meaning}", style="italic")
        table = Grid(label_style="cyan")
        table.add_row("at", f"+{ms(span.start_ns - origin_ns)} for {ms(span.duration_ns)}")
        if span.status != "UNSET":
            table.add_row("status", Text(f"{span.status} {span.status_message}".strip(), style="red" if span.status == "ERROR" else ""))
        for key, item in span.attributes.items():
            short = key.removeprefix("servetrace.").removeprefix("gen_ai.")
            table.add_row(short, value(item))
        for event in span.events:
            attributes = ", ".join(f"{k}={value(v, 40)}" for k, v in event.attributes.items())
            table.add_row("event", f"+{ms(event.time_ns - origin_ns)} {event.name} {attributes}".rstrip())
        if span.links:
            kinds: dict[str, int] = {}
            for link in span.links:
                kind = str(link.attributes.get("servetrace.link", "link"))
                kinds[kind] = kinds.get(kind, 0) + 1
            table.add_row("links", ", ".join(f"{n} to {kind}" for kind, n in kinds.items()))
        lines = [*heading.wrap(console, width), *table.lines(console, width)]
        # A re-layout of the screen costs more than everything else a hop move does: the panel
        # only ever grows (blank lines pad it to the tallest shown so far), so stepping through
        # hops of different sizes re-lays out the screen only the first time a taller one is shown.
        grew = len(lines) > self._lines
        self._lines = max(self._lines, len(lines))
        lines += [Text("")] * (self._lines - len(lines))
        self.update(_joined(lines), layout=grew)


def title_of(model: TraceModel) -> str:
    from pathlib import Path

    engine = f" ({model.engine})" if model.engine else ""
    return f"{Path(model.path).name}{engine}"
