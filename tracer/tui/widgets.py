"""The main screen's widgets: requests table, hop waterfall, state and span-detail panels."""
from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import DataTable, Static

from tracer.tui.format import bar, count, ms, value
from tracer.tui.model import Request, TraceModel
from tracer.tui.sources import hop_meaning
from tracer.tui.timeline import HopRow, Waterfall

STATUS_STYLES = {"error": "bold red", "unfinished": "yellow", "abort": "red", "stop": "green", "length": "green"}
MAX_BATCH_SHOWN = 8


class RequestsTable(DataTable):
    """One row per request: id, prompt / output / cached tokens, TTFT, latency, status."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    def on_mount(self) -> None:
        for label, key in (("request", "id"), ("prompt", "prompt"), ("out", "out"), ("cached", "cached"),
                           ("TTFT", "ttft"), ("latency", "latency"), ("status", "status")):
            self.add_column(label, key=key)

    def show(self, requests: list[Request]) -> None:
        self.clear()
        self.add_rows(
            (
                r.request_id,
                Text(count(r.prompt_tokens), justify="right"),
                Text(count(r.output_tokens), justify="right"),
                Text(count(r.cached_tokens), justify="right"),
                Text(ms(r.ttft_ns), justify="right"),
                Text(ms(r.latency_ns), justify="right"),
                Text(r.status, style=STATUS_STYLES.get(r.status, "")),
            )
            for r in requests
        )


class WaterfallTable(DataTable):
    """The selected request's hops in time: step, hop (indented by nesting), duration, bar."""

    BAR_MIN, FIXED_COLUMNS = 6, 44

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.waterfall: Waterfall | None = None
        self.rows_shown: list[HopRow] = []
        self._filter = ""

    def on_mount(self) -> None:
        for label, key in (("step", "step"), ("hop", "hop"), ("took", "time"), ("when", "bar")):
            self.add_column(label, key=key)

    def bar_width(self) -> int:
        return max(self.BAR_MIN, self.size.width - self.FIXED_COLUMNS)

    def on_resize(self) -> None:
        # The bar column is drawn for the table's width, known only after layout.
        if self.waterfall is not None and self.rows_shown:
            cursor = self.cursor_row
            self.show(self.waterfall, self._filter)
            self.move_cursor(row=cursor)

    def show(self, waterfall: Waterfall | None, hop_filter: str = "") -> None:
        self.waterfall = waterfall
        self._filter = hop_filter
        self.clear()
        if waterfall is None:
            self.rows_shown = []
            return
        rows = waterfall.rows
        if hop_filter:
            rows = [r for r in rows if hop_filter in r.span.name]
        self.rows_shown = rows
        origin, span, width = waterfall.start_ns, waterfall.end_ns - waterfall.start_ns, self.bar_width()
        self.add_rows(
            (
                Text(str(row.step.number) if row.step is not None else "", justify="right", style="dim"),
                Text("  " * min(row.depth, 6) + row.span.name,
                     style="bold red" if row.span.status == "ERROR" else ("cyan" if row.step is None else "")),
                Text(ms(row.span.duration_ns), justify="right"),
                Text(bar(row.span.start_ns, row.span.end_ns, origin, span, width),
                     style="red" if row.span.status == "ERROR" else "green"),
            )
            for row in rows
        )

    def current(self) -> HopRow | None:
        if not self.rows_shown or self.cursor_row < 0 or self.cursor_row >= len(self.rows_shown):
            return None
        return self.rows_shown[self.cursor_row]


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
