"""The main screen's two tables: the requests, and the selected request's hops (the waterfall).

Both draw only the rows on screen (tracer.tui.rowtable): switching requests costs the same
for a 10-hop request as for a 1,000-hop one, and a request's summary (TTFT, tokens, status)
is computed when its row is first drawn.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from rich.text import Text

from tracer.traces.schema import OVERLAPS_STEP
from tracer.traces.trace_file import SpanRecord
from tracer.tui.format import bar, count, ms
from tracer.tui.model import Request, TraceModel
from tracer.tui.rowtable import CELL_PADDING, Column, RowTable
from tracer.tui.step_time import CLOCK_LABELS, StepClock, steps, trace_clock
from tracer.tui.timeline import HopRow, Waterfall

STATUS_STYLES = {"error": "bold red", "unfinished": "yellow", "abort": "red", "stop": "green", "length": "green"}
MAX_INDENT = 6


class RequestsTable(RowTable):
    """One row per request: id, prompt / output / cached tokens, TTFT, latency, status."""

    # Numbers get fixed widths (measuring them would summarise every request up front).
    NUMBER_COLUMNS = (("prompt", 6), ("out", 5), ("cached", 6), ("TTFT", 7), ("latency", 7))
    STEP_TIME_WIDTH = 8  # TTFT and latency counted in steps (a replay): "38 steps"
    STATUS_WIDTH = 10

    def __init__(self, **kwargs) -> None:
        super().__init__(zebra_stripes=True, **kwargs)
        self.requests: list[Request] = []
        self._id_width = len("request")
        self.clock: StepClock | None = None
        self.time_labels = CLOCK_LABELS["wall"]  # TTFT and latency, named by the trace's clock

    def show(self, requests: list[Request], cursor: int = 0, model: TraceModel | None = None) -> None:
        """`model`: the requests' trace; where it ran no model (a replay) TTFT and latency count steps."""
        self.requests = requests
        kind = trace_clock(model) if model is not None else "wall"
        self.clock = StepClock(model) if kind == "steps" else None
        self.time_labels = CLOCK_LABELS[kind]
        self._id_width = max([len("request"), *map(len, (r.label for r in requests))])
        self.set_rows(len(requests), cursor)

    def columns(self, width: int) -> list[Column]:
        names = dict(zip(("TTFT", "latency"), self.time_labels))
        numbers = [(names.get(label, label), max(w, self.STEP_TIME_WIDTH if self.clock else 0, len(names.get(label, label)))
                    if label in names else w) for label, w in self.NUMBER_COLUMNS]
        fixed = sum(w + 2 * CELL_PADDING for _, w in numbers) + self.STATUS_WIDTH + 4 * CELL_PADDING
        id_width = max(len("request"), min(self._id_width, width - fixed))
        return ([Column("request", id_width)] + [Column(label, w, "right") for label, w in numbers]
                + [Column("status", self.STATUS_WIDTH)])

    def row_cells(self, index: int) -> Sequence[Text]:
        r, clock = self.requests[index], self.clock
        ttft, latency = (steps(clock.ttft(r)), steps(clock.latency(r))) if clock else (ms(r.ttft_ns), ms(r.latency_ns))
        return (Text(r.label), Text(count(r.prompt_tokens)), Text(count(r.output_tokens)),
                Text(count(r.cached_tokens)), Text(ttft), Text(latency),
                Text(r.status, style=STATUS_STYLES.get(r.status, "")))

    def current(self) -> Request | None:
        return self.requests[self.cursor_row] if 0 <= self.cursor_row < len(self.requests) else None


class WaterfallTable(RowTable):
    """The selected request's hops in time: step, hop (indented by nesting), duration, bar."""

    BAR_MIN = 6
    BAR_ROOMY = 20  # below this, nesting is indented by one space a level instead of two

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.waterfall: Waterfall | None = None
        self.rows_shown: list[HopRow] = []
        self._filter = ""
        self.processes: dict[int, str] = {}  # id(resource) -> label, when more than one process
        self.indent = 2  # spaces a nesting level, set with the columns

    def show(self, waterfall: Waterfall | None, hop_filter: str = "", cursor: int = 0) -> None:
        self.waterfall = waterfall
        # A request that ran in several processes (a live vLLM / SGLang server) shows each hop's.
        self.processes = waterfall.processes if waterfall is not None else {}
        self._filter = hop_filter
        rows = waterfall.rows if waterfall is not None else []
        if hop_filter:
            rows = [r for r in rows if hop_filter in r.span.name]
        self.rows_shown = rows
        self.set_rows(len(rows), cursor)

    def columns(self, width: int) -> list[Column]:
        rows = self.rows_shown
        step_width = max([len("step"), *(len(str(r.step.number)) for r in _distinct_steps(rows))])
        took_width = max([len("took"), *(len(ms(r.span.duration_ns)) for r in rows)])
        fixed = step_width + took_width + 8 * CELL_PADDING
        # Two spaces a nesting level when that leaves the bar room; one at 80 columns, where it is
        # the difference between a bar of a few cells and one that tells the hops apart.
        self.indent = 2 if width - fixed - self._hop_width(rows, 2) >= self.BAR_ROOMY else 1
        hop_width = self._hop_width(rows, self.indent)
        used = step_width + hop_width + took_width + 8 * CELL_PADDING
        columns = [Column("step", step_width, "right"), Column("hop", hop_width), Column("took", took_width, "right")]
        if self.processes:
            process_width = max(len("process"), *map(len, self.processes.values()))
            used += process_width + 2 * CELL_PADDING
            if width - used < self.BAR_MIN:
                # Narrow (80 columns): the process in full, no bar; the longest hop names give
                # way (cut with an ellipsis) before a process label would be cut at the edge.
                spare = width - used + 2 * CELL_PADDING  # `used` counted the bar's padding
                if spare < 0:
                    columns[1] = Column("hop", max(len("hop") + 8, hop_width + spare))
                return columns + [Column("process", process_width)]
            columns.append(Column("process", process_width))
        return columns + [Column("when", max(self.BAR_MIN, width - used))]

    @staticmethod
    def _hop_width(rows: list[HopRow], indent: int) -> int:
        return max([len("hop"), *(indent * min(r.depth, MAX_INDENT) + len(hop_text(r.span)) for r in rows)])

    def bar_width(self) -> int:
        last = self._layout_columns()[-1]
        return last.width if last.label == "when" else 0

    def row_cells(self, index: int) -> Sequence[Text]:
        row, waterfall = self.rows_shown[index], self.waterfall
        assert waterfall is not None
        span, failed = row.span, row.span.status == "ERROR"
        cells = [
            Text(str(row.step.number) if row.step is not None else "", style="dim"),
            Text(_indent(row.depth, self.indent) + hop_text(span), style="bold red" if failed else ("cyan" if row.step is None else "")),
            Text(ms(span.duration_ns)),
        ]
        if self.processes:
            cells.append(Text(self.processes.get(id(span.resource), "?"), style="magenta"))
        width = self.bar_width()
        if width:
            cells.append(Text(bar(span.start_ns, span.end_ns, waterfall.start_ns, waterfall.end_ns - waterfall.start_ns,
                                  width), style="red" if failed else "green"))
        return cells

    def current(self) -> HopRow | None:
        if not self.rows_shown or self.cursor_row < 0 or self.cursor_row >= len(self.rows_shown):
            return None
        return self.rows_shown[self.cursor_row]


def hop_text(span: SpanRecord) -> str:
    """A hop's name in the waterfall; a schedule that began while another step's model execution
    ran (async scheduling: servetrace.step.overlaps_step) says which step it overlaps, as its bar
    overlaps that execution's."""
    if not span.links:  # the overlap is also a link: most rows are decided without their attributes
        return span.name
    overlapped = span.attributes.get(OVERLAPS_STEP)
    return f"{span.name} \u2225 step {overlapped}" if isinstance(overlapped, int) else span.name


@lru_cache(maxsize=2 * (MAX_INDENT + 1))
def _indent(depth: int, width: int) -> str:
    return " " * width * min(depth, MAX_INDENT)


def _distinct_steps(rows: list[HopRow]) -> list[HopRow]:
    """One row per step (rows of a step are adjacent, mostly): the step column's width."""
    seen: set[int] = set()
    out = []
    for row in rows:
        if row.step is not None and id(row.step) not in seen:
            seen.add(id(row.step))
            out.append(row)
    return out
