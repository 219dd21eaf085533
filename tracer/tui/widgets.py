"""The main screen's side panel: the engine state and the focused span's details.

The two tables (requests, waterfall) live in tracer.tui.tables and are re-exported here."""
from __future__ import annotations

from rich.console import Console
from rich.segment import Segment
from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tracer.traces.schema import KV_USAGE, LINK_KIND
from tracer.tui.format import count, fraction, ms, value
from tracer.tui.model import TraceModel
from tracer.tui.rowtable import set_virtual_size
from tracer.tui.sources import hop_meaning
from tracer.tui.tables import STATUS_STYLES, RequestsTable, WaterfallTable
from tracer.tui.timeline import HopRow

__all__ = ["RequestsTable", "STATUS_STYLES", "SidePanel", "WaterfallTable", "detail_lines", "state_lines", "title_of"]

MAX_BATCH_SHOWN = 8
FRACTION_KEYS = frozenset({KV_USAGE})  # shown as percentages, as the state panel's KV line is


class Grid:
    """Label / value rows laid out as Text for a known width: what a two-column Rich
    Table.grid draws (labels as wide as the widest, values wrapped under their own column),
    at a fraction of the cost (the panels are redrawn on every keystroke).

    Nothing is cut mid-way: a label too long for the label column, or a value with a word too
    long for the value column (an id, a path), goes on a line of its own and its value under it,
    indented, at the panel's full width. Values wrap at spaces; a value longer than
    MAX_VALUE_LINES ends with an ellipsis there (the panel is for reading a hop at a glance)."""

    LABEL_SHARE = 0.45  # labels longer than this share of the width are stacked over their value
    STACK_INDENT = 2
    MAX_VALUE_LINES = 8

    def __init__(self, label_style: str) -> None:
        self.label_style = label_style
        self.rows: list[tuple[str, Text]] = []

    def add_row(self, label: str, item: str | Text) -> None:
        self.rows.append((label, item if isinstance(item, Text) else Text(item)))

    def lines(self, console: Console, width: int) -> list[Text]:
        if not self.rows:
            return []
        cap = max(4, int(width * self.LABEL_SHARE))
        inline = [label for label, _ in self.rows if len(label) <= cap]
        label_width = max(map(len, inline), default=0)
        value_width = max(1, width - label_width - 1)
        out: list[Text] = []
        for label, item in self.rows:
            longest_word = max((len(word) for word in item.plain.split()), default=0)  # stacked: more room
            if len(label) > cap and len(label) + 1 + len(item.plain) <= width and "\n" not in item.plain:
                # A long key with a short value: one line, the value after the key, unaligned.
                line = Text(label, style=self.label_style, end="")
                line.append(" ")
                line.append_text(item)
                out.append(line)
                continue
            if len(label) <= cap and longest_word <= value_width:
                parts = self._wrap(item, console, value_width)
                for index, part in enumerate(parts):
                    line = Text(end="")
                    line.append((label if index == 0 else "").ljust(label_width), style=self.label_style if index == 0 else "")
                    line.append(" ")
                    line.append_text(part)
                    out.append(line)
                continue
            out.extend(Text(part, style=self.label_style, end="") for part in _chunks(label, width))
            indent = Text(" " * self.STACK_INDENT, end="")
            out.extend(indent + part for part in self._wrap(item, console, max(1, width - self.STACK_INDENT)))
        return out

    def _wrap(self, item: Text, console: Console, width: int) -> list[Text]:
        plain = item.plain
        if len(plain) <= width and "\n" not in plain:
            return [item]
        parts = [part for part in item.divide(break_offsets(plain, width))]
        for part in parts:
            part.rstrip()
            part.end = ""
        parts = [part for part in (_lstrip(p) for p in parts) if part.plain] or [Text("", end="")]
        if len(parts) > self.MAX_VALUE_LINES:
            parts = parts[:self.MAX_VALUE_LINES]
            last = parts[-1]
            last.truncate(max(1, width - 1))
            last.append("…")
        return parts


BREAK_AFTER = "-_/.:,;=)]}"  # where a word longer than its column is broken (ids, paths, model names)


def break_offsets(plain: str, width: int) -> list[int]:
    """Where lines of `plain` start when wrapped to `width`: at spaces (and newlines), and a word
    wider than the column after its last separator that fits (a hyphen, slash, dot ...), never
    mid-word unless the word has none."""
    offsets: list[int] = []
    start, length = 0, len(plain)
    while length - start > width or "\n" in plain[start:start + width + 1]:
        window = plain[start:start + width + 1]
        newline = window.find("\n")
        if newline >= 0:
            cut = start + newline + 1
        else:
            space = window.rfind(" ")
            if space > 0:
                cut = start + space + 1
            else:
                punct = max(window[:width].rfind(c) for c in BREAK_AFTER)
                # After a separator in the line's second half; else folded at the width (a
                # separator early on would leave most of the line empty).
                cut = start + (punct + 1 if punct >= width // 2 else width)
        offsets.append(cut)
        start = cut
    return offsets


def _lstrip(text: Text) -> Text:
    stripped = len(text.plain) - len(text.plain.lstrip(" \n"))
    return text[stripped:] if stripped else text


def _chunks(text: str, width: int) -> list[str]:
    """A label longer than the whole panel, in pieces broken after a dot or an underscore."""
    pieces = [text[a:b] for a, b in zip([0, *break_offsets(text, width)], [*break_offsets(text, width), len(text)])]
    return pieces or [""]


def state_lines(row: HopRow | None, position: tuple[int, int], request_id: str, console: Console,
                width: int) -> list[Text]:
    """The engine as it stood after the focused hop (replay)."""
    if row is None:
        return [Text("no hop selected", style="dim")]
    state = row.state
    table = Grid(label_style="bold")
    table.add_row("hop", f"{position[0]} of {position[1]}")
    if state.step is not None:
        table.add_row("step", str(state.step))
    usage = "-" if state.kv_usage is None else fraction(state.kv_usage)
    queues = f"{count(state.num_running)} running, {count(state.num_waiting)} waiting"
    kv = f"{usage} used, {count(state.free_blocks)} free"
    room = width - len("computed") - 1  # the value column beside the longest label
    if max(len(queues), len(kv)) > room:  # 80 columns: one line each rather than two
        queues = f"{count(state.num_running)} run, {count(state.num_waiting)} wait"
        kv = f"{usage}, {count(state.free_blocks)} free"
    table.add_row("queues", queues)
    table.add_row("KV", kv)
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
        shown = fraction(item) if key in FRACTION_KEYS and isinstance(item, (int, float)) else value(item)
        table.add_row(short, shown)
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
        scrollbar-size-vertical: 1;
        scrollbar-gutter: stable;  /* the lines are laid out for one width, scrollbar or not */
        overflow-x: hidden;
        overflow-y: auto;
        & > .sidepanel--rule {
            color: $primary-background;
        }
    }
    """
    STATE_HEIGHT = 9  # lines kept for the state, so the rule and the details do not move
    MAX_STATE_HEIGHT = 14

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state: list[Text] = []
        self.details: list[Text] = []
        self._shown: tuple | None = None
        self._strips: dict[int, Strip] = {}
        # The state's lines at this width: at least STATE_HEIGHT, grown (never shrunk) when a hop's
        # state wraps to more at a narrow width, so the rule moves at most once, not on every hop.
        self.state_height = self.STATE_HEIGHT

    def show(self, row: HopRow | None, position: tuple[int, int], request_id: str, origin_ns: int) -> None:
        self._shown = (row, position, request_id, origin_ns)
        console, width = self.app.console, self._width()
        self.state = state_lines(row, position, request_id, console, width)[:self.MAX_STATE_HEIGHT]
        self.state_height = max(self.state_height, len(self.state))
        self.details = detail_lines(row, origin_ns, console, width)
        self._strips.clear()
        set_virtual_size(self, Size(width, self.state_height + 1 + len(self.details)))
        self.refresh()

    def state_text(self) -> str:
        return "\n".join(line.plain for line in self.state)

    def details_text(self) -> str:
        return "\n".join(line.plain for line in self.details)

    def _width(self) -> int:
        width = self.scrollable_content_region.width
        return width if width > 0 else 25  # before the first layout: the side panel's usual width

    def on_resize(self) -> None:
        self.state_height = self.STATE_HEIGHT
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
        height = self.state_height
        if index < height:
            text = self.state[index] if index < len(self.state) else Text("")
        elif index == height:
            text = Text("─" * width)
            base += self.get_component_rich_style("sidepanel--rule")
        else:
            details = self.details
            text = details[index - height - 1] if index - height - 1 < len(details) else Text("")
        segments = Segment.apply_style(text.render(self.app.console), base)
        return Strip(segments).extend_cell_length(width, base).crop(0, width).simplify()


def title_of(model: TraceModel) -> str:
    from pathlib import Path

    engine = f" ({model.engine_label})" if model.engine_label else ""
    return f"{Path(model.path).name}{engine}"
