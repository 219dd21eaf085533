"""`servetrace tui TRACE [TRACE2]`: the Textual trace explorer."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textual import events
from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Input, Static

from tracer.tui.compare import Comparison, compare_models
from tracer.tui.keys import MAIN_KEYS
from tracer.tui.loader import load_trace
from tracer.tui.memory import IdleCollector
from tracer.tui.model import Request, TraceModel, build_model
from tracer.tui.rowtable import RowTable
from tracer.tui.styles import CSS
from tracer.tui.screens import CompareScreen, HelpScreen, SourceScreen
from tracer.tui.timeline import Waterfall, build_waterfall
from tracer.tui.widgets import RequestsTable, SidePanel, WaterfallTable, title_of
from tracer.tui.why_screen import WhyScreen

HOP_FILTER_PREFIX = "hop:"
IDLE_CHECK_S = 0.5  # how often the app checks for a pause to collect garbage in


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def matches(request: Request, text: str) -> bool:
    """The request filter: any of the request's ids (the client's X-Request-Id too), or its status."""
    if not text or text in request.request_id.lower() or text in request.status.lower():
        return True
    return any(text in rid.lower() for rid in request.ids)


class ExplorerApp(App):
    TITLE = "servetrace"
    ENABLE_COMMAND_PALETTE = False
    CSS = CSS
    # The footer, the help screen and check_action all read this one list (tracer.tui.keys).
    BINDINGS = MAIN_KEYS

    def __init__(self, models: Sequence[TraceModel]) -> None:
        super().__init__()
        if not models:
            raise ValueError("the explorer needs at least one trace")
        self.models = list(models)
        self.active = 0
        self.waterfalls: dict[tuple[int, str], Waterfall] = {}
        self.shown_requests: list[Request] = []
        self.request_filter = ""
        self.hop_filter = ""
        self._comparison: Comparison | None = None
        self.collector = IdleCollector()

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path]) -> "ExplorerApp":
        return cls([build_model(load_trace(path)) for path in paths])

    # Every binding of the main view but quit.
    main_screen_actions = frozenset(b.action for b in BINDINGS if b.action != "quit")

    @property
    def model(self) -> TraceModel:
        return self.models[self.active]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="≡")
        yield Static(id="warning")
        yield RequestsTable(id="requests", on_highlight=self.request_highlighted)
        with Horizontal(id="body"):
            yield WaterfallTable(id="waterfall", on_highlight=lambda row: self.show_hop())
            yield SidePanel(id="side")
        yield Input(placeholder="filter requests (id, status) or hop:NAME", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        # Full garbage collections wait for a pause in the input (tracer.tui.memory).
        self.collector.start()
        self.set_interval(IDLE_CHECK_S, self.collector.tick)
        self.show_trace()
        self.query_one("#requests", RequestsTable).focus()

    def on_unmount(self) -> None:
        self.collector.stop()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.InputEvent):
            self.collector.input_seen()
        await super().on_event(event)

    # -- what is shown ------------------------------------------------------------------------

    def show_trace(self) -> None:
        model = self.model
        # The trace-switch hint leads the title: at 80 columns the header cuts its end, not the hint.
        others = f"trace {self.active + 1} of {len(self.models)}, x switches · " if len(self.models) > 1 else ""
        self.title = f"{others}{title_of(model)}"
        self.sub_title = self.trace_line(model)
        warning = self.query_one("#warning", Static)
        warning.update(model.warning())
        warning.display = bool(model.warning())
        self.show_requests()

    def trace_line(self, model: TraceModel) -> str:
        """The sub-title: what the trace holds."""
        foreign = (f" · {len(model.foreign_traces)} traces of the engine's own tracing name no request"
                   if model.foreign_traces else "")
        return (f"{plural(len(model.requests), 'request')} · {plural(len(model.steps), 'step')} · "
                f"{plural(len(model.spans), 'span')}{foreign}")

    def show_requests(self) -> None:
        text = self.request_filter.lower()
        requests = [r for r in self.model.requests.values() if matches(r, text)]
        self.shown_requests = requests
        self.query_one("#requests", RequestsTable).show(requests, model=self.model)
        self.show_filter()
        self.show_request(requests[0] if requests else None)

    def waterfall_of(self, request: Request) -> Waterfall:
        key = (self.active, request.request_id)
        if key not in self.waterfalls:
            self.waterfalls[key] = build_waterfall(self.model, request)
        return self.waterfalls[key]

    def show_request(self, request: Request | None) -> None:
        table = self.query_one("#waterfall", WaterfallTable)
        table.show(self.waterfall_of(request) if request is not None else None, self.hop_filter)
        self.show_hop()

    def show_hop(self) -> None:
        table = self.query_one("#waterfall", WaterfallTable)
        row = table.current()
        waterfall = table.waterfall
        request_id = waterfall.request.request_id if waterfall else ""
        self.query_one("#side", SidePanel).show(row, (table.cursor_row + 1, len(table.rows_shown)), request_id,
                                                waterfall.start_ns if waterfall else 0)

    # -- events ---------------------------------------------------------------------------------

    def request_highlighted(self, row: int) -> None:
        if 0 <= row < len(self.shown_requests):
            self.show_request(self.shown_requests[row])

    def on_row_table_row_selected(self, event: RowTable.RowSelected) -> None:
        if event.table.id == "requests":
            self.query_one("#waterfall", WaterfallTable).focus()
        elif event.table.id == "waterfall":
            self.action_source()

    def on_input_changed(self, event: Input.Changed) -> None:
        value = event.value.strip()
        if value.startswith(HOP_FILTER_PREFIX):
            self.hop_filter, self.request_filter = value[len(HOP_FILTER_PREFIX):].strip(), ""
        else:
            self.hop_filter, self.request_filter = "", value
        self.show_requests()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_close_filter()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Main-screen actions stay out of the way (and out of the footer) on other screens.
        if action in self.main_screen_actions and len(self.screen_stack) > 1:
            return False
        return True

    # -- actions ----------------------------------------------------------------------------------

    def move_hop(self, delta: int) -> str | None:
        """Move the hop cursor by `delta` rows; the focused hop's name afterwards."""
        table = self.query_one("#waterfall", WaterfallTable)
        if table.row_count:
            table.move_cursor(row=min(max(table.cursor_row + delta, 0), table.row_count - 1))
        row = table.current()
        return row.span.name if row is not None else None

    def action_next_hop(self) -> None:
        self.move_hop(1)

    def action_previous_hop(self) -> None:
        self.move_hop(-1)

    def _move_step(self, forward: bool) -> None:
        table = self.query_one("#waterfall", WaterfallTable)
        rows, here = table.rows_shown, table.cursor_row
        current = rows[here].state.step if 0 <= here < len(rows) else None
        order = range(here + 1, len(rows)) if forward else range(here - 1, -1, -1)
        for index in order:
            step = rows[index].state.step
            if step is not None and step != current and (forward or index == 0 or rows[index - 1].state.step != step):
                table.move_cursor(row=index)
                return

    def action_next_step(self) -> None:
        self._move_step(True)

    def action_previous_step(self) -> None:
        self._move_step(False)

    def action_source(self) -> None:
        row = self.query_one("#waterfall", WaterfallTable).current()
        if row is None:
            self.notify("select a hop first", timeout=2)
            return
        # The trace's own engine when it is an upstream one, else the one ours mirrors in the trace's
        # mode (catalog: mini-sglang mirrors sglang), else the catalog's first upstream.
        waterfall = self.query_one("#waterfall", WaterfallTable).waterfall
        operation = waterfall.request.operation if waterfall is not None else ""
        model = self.model
        upstream = model.engine if model.mirrors in ("", model.engine) else model.mirrors
        version = model.engine_version if upstream == model.engine else ""
        self.push_screen(SourceScreen(row.span.name, upstream, version, operation, model.engine_mode))

    def action_why(self) -> None:
        """The "why" view of the selected request; n / p there move this view's cursor along."""
        table = self.query_one("#requests", RequestsTable)
        if not self.shown_requests:
            self.notify("no request to explain", timeout=2)
            return

        def follow(request: Request) -> None:
            rows = [r.request_id for r in self.shown_requests]
            if request.request_id in rows:
                table.move_cursor(row=rows.index(request.request_id))

        self.push_screen(WhyScreen(self.model, self.shown_requests, table.cursor_row, follow))

    def comparison(self) -> Comparison | None:
        if len(self.models) < 2:
            return None
        if self._comparison is None:
            self._comparison = compare_models(self.models[-2], self.models[-1])
        return self._comparison

    def action_compare(self) -> None:
        comparison = self.comparison()
        if comparison is None:
            self.notify("compare needs two traces: servetrace tui TRACE TRACE2", severity="warning", timeout=3)
            return
        self.push_screen(CompareScreen(comparison))

    def action_switch_trace(self) -> None:
        if len(self.models) > 1:
            self.active = (self.active + 1) % len(self.models)
            self.show_trace()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_close_filter(self) -> None:
        """Close the filter box (the filter stays, shown under the requests); with the box
        closed, clear the filter."""
        box = self.query_one("#filter", Input)
        if box.display:
            box.display = False
            self.query_one("#requests", RequestsTable).focus()
        elif box.value:
            box.value = ""  # Input.Changed shows every request again

    def show_filter(self) -> None:
        """The applied filter, on the requests table's bottom border: the box that set it is closed."""
        requests = self.query_one("#requests", RequestsTable)
        if self.hop_filter:
            requests.border_subtitle = f"hops: {self.hop_filter} · / edits, esc clears"
        elif self.request_filter:
            requests.border_subtitle = (f"filter: {self.request_filter} · {len(self.shown_requests)} of "
                                        f"{plural(len(self.model.requests), 'request')} · / edits, esc clears")
        else:
            requests.border_subtitle = ""

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.BINDINGS))
