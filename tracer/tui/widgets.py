"""The main screen's side panels: the engine state and the focused span's details.

The two tables (requests, waterfall) live in tracer.tui.tables and are re-exported here."""
from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tracer.tui.format import count, ms, value
from tracer.tui.model import TraceModel
from tracer.tui.sources import hop_meaning
from tracer.tui.tables import STATUS_STYLES, RequestsTable, WaterfallTable
from tracer.tui.timeline import HopRow

__all__ = ["DetailsPanel", "RequestsTable", "STATUS_STYLES", "StatePanel", "WaterfallTable", "title_of"]

MAX_BATCH_SHOWN = 8


class StatePanel(Static):
    """The engine as it stood after the focused hop (replay). Its height is fixed (CSS), so
    updates skip the screen re-layout."""

    def show(self, row: HopRow | None, position: tuple[int, int], request_id: str) -> None:
        if row is None:
            self.update(Text("no hop selected", style="dim"), layout=False)
            return
        state = row.state
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold")
        table.add_column()
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
        self.update(table, layout=False)


class DetailsPanel(Static):
    """The focused span: hop meaning, timing, attributes, events, links."""

    _lines = 0
    _grew = False

    def show(self, row: HopRow | None, origin_ns: int) -> None:
        if row is None:
            self.update("")
            return
        span = row.span
        heading = Text(span.name, style="bold cyan")
        meaning = hop_meaning(span.name)
        if meaning:
            heading.append(f"\n{meaning}", style="italic")
        table = Table.grid(padding=(0, 1))
        table.add_column(style="cyan", no_wrap=True)
        table.add_column()
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
        self.update(self._padded(Group(heading, table)), layout=self._grew)

    def _padded(self, content: Group) -> Group:
        """`content` padded with blank lines to the tallest content shown so far.

        A re-layout of the screen costs more than everything else a hop move does (most of a
        keystroke's time at 80x24): the panel only ever grows, so stepping through hops of
        different sizes re-lays out the screen only the first time a taller one is shown."""
        width = self.content_region.width
        self._grew = False
        if width <= 0:  # not laid out yet: the first layout sizes it
            return content
        console = self.app.console
        lines = len(console.render_lines(content, console.options.update_width(width), pad=False))
        if lines > self._lines:
            self._lines, self._grew = lines, True
        return Group(*content.renderables, *[Text("")] * (self._lines - lines))


def title_of(model: TraceModel) -> str:
    from pathlib import Path

    engine = f" ({model.engine})" if model.engine else ""
    return f"{Path(model.path).name}{engine}"
