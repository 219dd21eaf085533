"""`servetrace tui --listen`: the explorer filled by an OTLP/HTTP receiver as spans arrive.

The receiver (tracer.traces.receiver) runs in a process of its own and sends one OTLP/JSON line
per export down a pipe. Here a reader thread parses each line (the loader's reader: the same
spans a trace file gives) into a LiveWindow; a builder thread rebuilds the model from the window
when something arrived, at most every REBUILD_S, and the app swaps it in on its own thread.

The UI thread does as little as it can, since a key that arrives while it works waits for it:
the builder hands over a finished model (built from scratch: tracer.tui.model is one pass over
the spans; past the limit it is trimmed in place to what the window keeps, so it holds only
what is shown; the rows of the app's filter picked), the swap is an assignment and a redraw of
the rows on screen, and the old model goes to a thread of its own to be freed
(release_gradually). Its models are not frozen (tracer.tui.memory.gc_paused): they are replaced
every REBUILD_S, and frozen garbage would never be collected.

The window is bounded: past `limit` requests the oldest are dropped (their traces, the step
traces and the engine's own request-less traces that ended before the oldest kept request
began), never the newest, and the app says so.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable

from rich.text import Text
from textual.widgets import Static

from tracer.traces.receiver import ReceiverProcess
from tracer.traces.trace_file import SchemaVersionError, SkippedLine
from tracer.tui.app import ExplorerApp, matches
from tracer.tui.loader import LoadedTrace, _parse_line
from tracer.tui.memory import IdleCollector
from tracer.tui.model import Request, TraceModel, build_model
from tracer.tui.records import Span
from tracer.tui.timeline import Waterfall
from tracer.tui.widgets import RequestsTable, WaterfallTable

DEFAULT_WINDOW = 200  # requests kept; a vLLM request is ~150 spans with its steps
REBUILD_S = 1.0  # newest data shown at most this late (plus one build)
INPUT_QUIET_S = 0.15  # a new model waits until no key came for this long
SWITCH_INTERVAL_S = 0.0005  # sys.setswitchinterval while live: see LiveExplorerApp.on_mount
FULL_GC_GAP_S = 10.0  # see LiveExplorerApp.__init__
_start, _end, _span_id = attrgetter("start_ns"), attrgetter("end_ns"), attrgetter("span_id")


@dataclass
class WindowStats:
    spans_received: int = 0
    exports_received: int = 0
    requests_dropped: int = 0
    lines_skipped: int = 0
    last_error: str = ""


class LiveWindow:
    """The spans received, by trace, bounded to the newest `limit` requests. Thread-safe: the
    reader adds while the builder builds."""

    def __init__(self, limit: int = DEFAULT_WINDOW, label: str = "live") -> None:
        if limit < 1:
            raise ValueError(f"the window keeps at least one request, got {limit}")
        self.limit = limit
        self.label = label
        self.traces: dict[str, list[Span]] = {}  # trace id -> spans, in arrival order
        self.stats = WindowStats()
        self.changed = threading.Event()
        self._lock = threading.Lock()

    def add_line(self, line: bytes) -> int:
        """Parse one OTLP/JSON export into the window; the number of spans it held."""
        try:
            spans = _parse_line(line)
        except SchemaVersionError as exc:
            spans, error = [], str(exc)
        except Exception as exc:  # a bad export must not stop the feed: counted and shown
            spans, error = [], f"{type(exc).__name__}: {exc}"
        else:
            error = ""
        with self._lock:
            self.stats.exports_received += 1
            if error:
                self.stats.lines_skipped += 1
                self.stats.last_error = error
                return 0
            traces = self.traces
            for span in spans:
                members = traces.get(span.trace_id)
                if members is None:
                    traces[span.trace_id] = [span]
                else:
                    members.append(span)
            self.stats.spans_received += len(spans)
        self.changed.set()
        return len(spans)

    def build(self) -> TraceModel:
        """The model of the window as it is now, trimmed to the newest `limit` requests: the
        dropped requests' traces leave the window (the next build does not see them) and the
        model handed over holds none of their spans (so nothing of them is freed on the UI
        thread, and the span count it shows is the window's)."""
        with self._lock:
            spans = [span for members in self.traces.values() for span in members]
            skipped = ([SkippedLine(0, f"{self.stats.lines_skipped} export(s) unreadable: {self.stats.last_error}")]
                       if self.stats.lines_skipped else [])
        spans.sort(key=_end, reverse=True)  # by start, longest first on ties (as the loader sorts)
        spans.sort(key=_start)
        model = build_model(LoadedTrace(spans, skipped, self.label), freeze=False)
        excess = len(model.requests) - self.limit
        if excess > 0:
            self._drop(model, excess)
        return model

    def _drop(self, model: TraceModel, excess: int) -> None:
        # A request's start is its first span's (the spans are in start order): its summary,
        # which also starts there, would read every span's attributes.
        by_start = sorted(model.requests.values(), key=lambda request: request.spans[0].start_ns)
        dropped, kept = by_start[:excess], by_start[excess:]
        gone = {span.trace_id for request in dropped for span in request.spans}
        horizon = kept[0].spans[0].start_ns
        # Steps no kept request can have taken part in: ended before the oldest kept one began;
        # so with the engine's own traces that name no request (else they would pile up).
        old_steps = [step for step in model.steps if step.end_ns < horizon]
        gone.update(span.trace_id for step in old_steps for span in step.spans)
        foreign = [members for members in model.foreign_traces if members and max(map(_end, members)) < horizon]
        gone.update(members[0].trace_id for members in foreign)
        with self._lock:
            for trace_id in gone:
                self.traces.pop(trace_id, None)
            self.stats.requests_dropped += len(dropped)
        for request in dropped:
            del model.requests[request.request_id]
        # The rest of the model without what left: what a build of the window would now give,
        # but for the kept steps' batches, which still name the requests that were dropped.
        # What left is freed a slice at a time (free_in_slices), its spans last.
        before = model.by_span_id, model.step_of_span, model.steps, model.foreign_traces, model.spans
        old, old_foreign = set(map(id, old_steps)), set(map(id, foreign))
        model.steps = [step for step in model.steps if id(step) not in old]
        for index, step in enumerate(model.steps):
            step.index = index
        model.foreign_traces = [members for members in model.foreign_traces if id(members) not in old_foreign]
        model.spans = [span for span in model.spans if span.trace_id not in gone]
        model.by_span_id = dict(zip(map(_span_id, model.spans), model.spans))
        model.step_of_span = {span.span_id: step for step in model.steps for span in step.spans}
        del dropped, old_steps, foreign, by_start, kept
        free_in_slices(*before)

    def notice(self) -> str:
        stats = self.stats
        text = f"{stats.spans_received:,} spans received"
        if stats.requests_dropped:
            text += f" · showing the last {self.limit} requests; {stats.requests_dropped:,} dropped"
        if stats.lines_skipped:
            text += f" · {stats.lines_skipped} unreadable export(s): {stats.last_error[:80]}"
        return text


def release_gradually(model: TraceModel) -> None:
    """Drop a model's references a slice at a time (call it off the UI thread): the indexes
    first (the spans they point to are still in model.spans), then the requests and steps,
    then the spans themselves, where most of the freeing happens."""
    free_in_slices(model.by_span_id, model.step_of_span, model.requests, model.steps, model.foreign_traces,
                   model.spans)


def free_in_slices(*containers: dict | list, chunk: int = 256) -> None:
    """Empty each container (in order) a slice at a time.

    What it buys: a model's last reference dropped at once frees everything only it held (after
    a second at 15,000 spans/s, some 15,000 spans of requests that were dropped) in one C call
    that holds the GIL throughout: about 50 ms for 60,000 spans, the UI thread stalled with it.
    Emptied a slice at a time, the GIL can pass to the UI thread between slices."""
    for items in containers:
        if isinstance(items, list):
            while items:
                del items[-chunk:]
        else:
            while items:
                for _ in range(min(chunk // 16, len(items))):  # a request frees its list of spans with it
                    items.popitem()


@dataclass(frozen=True)
class Prepared:
    """A model made ready for the UI on the builder thread: every request summarised (the rows'
    numbers), and the rows that `filter_text` shows."""

    model: TraceModel
    filter_text: str
    shown: list[Request]


class LiveFeed:
    """Reads the receiver's lines into a window and rebuilds models; `on_model` is called (on
    the builder thread) with each new one. Models the UI is done with come back through
    `retire` and are freed on a thread of their own (release_gradually)."""

    def __init__(self, receiver: ReceiverProcess, window: LiveWindow, on_model: Callable[[TraceModel], None],
                 rebuild_s: float = REBUILD_S) -> None:
        self.receiver, self.window, self.on_model, self.rebuild_s = receiver, window, on_model, rebuild_s
        self._stop = threading.Event()
        self._retired: queue.SimpleQueue[tuple[TraceModel, list[Request], list[Waterfall]] | None] = queue.SimpleQueue()
        self.build_s: list[float] = []  # each rebuild's time (the bench reports them)
        self._threads = [threading.Thread(target=self._read, name="otlp-lines", daemon=True),
                         threading.Thread(target=self._build, name="live-model", daemon=True),
                         threading.Thread(target=self._release, name="live-release", daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.window.changed.set()
        self._retired.put(None)
        self.receiver.stop()

    def retire(self, model: TraceModel, shown: list[Request] | None = None,
               waterfalls: list[Waterfall] | None = None) -> None:
        """A model the UI no longer shows (with the rows it showed and the waterfalls drawn
        from it): freed off the UI thread."""
        self._retired.put((model, shown or [], waterfalls or []))

    def _read(self) -> None:
        lines = self.receiver.lines
        while not self._stop.is_set():
            try:
                line = lines.recv_bytes()
            except (EOFError, OSError):
                return  # the receiver is gone (stopped, or killed)
            self.window.add_line(line)

    def _build(self) -> None:
        while not self._stop.is_set():
            self.window.changed.wait()
            if self._stop.is_set():
                return
            self.window.changed.clear()
            started = time.perf_counter()
            model = self.window.build()
            self.on_model(model)
            # A build that took long waits as long again: the UI thread keeps most of the time.
            elapsed = time.perf_counter() - started
            self.build_s.append(elapsed)
            self._stop.wait(max(self.rebuild_s, 2 * elapsed) - elapsed)

    def _release(self) -> None:
        while (retired := self._retired.get()) is not None:
            model, shown, waterfalls = retired
            del retired
            # A waterfall and its rows point at each other: left alone, the spans they hold would
            # wait for a full collection (which waits for a pause in the input).
            for waterfall in waterfalls:
                waterfall.rows.clear()
            free_in_slices(shown, waterfalls)
            release_gradually(model)
            del model, shown, waterfalls


class LiveExplorerApp(ExplorerApp):
    """The explorer on a live window: the model is replaced as spans arrive, the request under
    the cursor stays under it, and the warning line says what the window holds."""

    def __init__(self, receiver: ReceiverProcess, window: LiveWindow, rebuild_s: float = REBUILD_S) -> None:
        super().__init__([build_model(LoadedTrace([], [], window.label))])
        self.window = window
        self.address = receiver.address
        self.feed = LiveFeed(receiver, window, self._model_built, rebuild_s)
        # Garbage keeps coming while the user pauses (models replaced every REBUILD_S): one full
        # collection (the whole window, 50-200 ms) per FULL_GC_GAP_S of pause, not per tick.
        self.collector = IdleCollector(gap_s=FULL_GC_GAP_S)
        self.models_shown = 0
        self._pending: Prepared | None = None
        self._prepared: Prepared | None = None
        self._keep: tuple[str | None, int, int] | None = None
        self._notice_lines = 0

    def on_mount(self) -> None:
        super().on_mount()
        # The builder thread holds the GIL between the UI thread's waits: each time the UI thread
        # comes back from select() or a terminal write it waits up to the switch interval (5 ms
        # by default) for it, dozens of times per keystroke. A shorter interval bounds that wait.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.feed.start()

    def on_unmount(self) -> None:
        self.feed.stop()
        sys.setswitchinterval(self._switch_interval)
        super().on_unmount()

    def prepare(self, model: TraceModel) -> Prepared:
        """On the builder thread: what the swap would otherwise compute on the UI thread. The
        filter is read as it is now; a swap finds out if it changed since. (Summaries are left
        to the rows drawn: a few on screen cost less than 200 here competing for the GIL.)"""
        for request in model.requests.values():
            request.label  # noqa: B018 -- read for every row when the table is shown
        model.engine, model.engine_version, model.service  # noqa: B018 -- the title and the source pane's
        text = self.request_filter.lower()
        return Prepared(model, text, [r for r in model.requests.values() if matches(r, text)])

    def _model_built(self, model: TraceModel) -> None:
        prepared = self.prepare(model)
        try:
            self.call_from_thread(self._offer, prepared)
        except RuntimeError:
            self.feed.retire(model, prepared.shown)  # the app is closing

    def _offer(self, prepared: Prepared) -> None:
        """Swap the new model in when the keyboard has been quiet for INPUT_QUIET_S: a swap
        redraws both tables, and a key that arrives during one waits for it. A model that
        waited and was overtaken by a newer one is retired unseen."""
        if self._pending is not None and self._pending is not prepared:
            self.feed.retire(self._pending.model, self._pending.shown)
        self._pending = prepared
        quiet = time.monotonic() - self.collector.last_input
        if quiet >= INPUT_QUIET_S:
            self._pending = None
            self.swap_model(prepared)
        else:
            self.set_timer(INPUT_QUIET_S - quiet, self._swap_pending)

    def _swap_pending(self) -> None:
        if self._pending is not None:
            self._offer(self._pending)

    def swap_model(self, prepared: Prepared) -> None:
        """Show the new model; the request and the hop under the cursors stay under them. The
        old model (and the waterfalls drawn from it) is freed off this thread."""
        requests = self.query_one("#requests", RequestsTable)
        waterfall = self.query_one("#waterfall", WaterfallTable)
        current = requests.current()
        self._keep = (current.request_id if current is not None else None, requests.cursor_row, waterfall.cursor_row)
        old, old_prepared, old_waterfalls = self.models[self.active], self._prepared, self.waterfalls
        self.models[self.active] = prepared.model
        self._prepared = prepared
        self.waterfalls = {}
        self.show_trace()
        self.models_shown += 1
        self.feed.retire(old, old_prepared.shown if old_prepared is not None else None, list(old_waterfalls.values()))

    def show_requests(self) -> None:
        keep, self._keep = self._keep, None
        if keep is None:
            super().show_requests()
            return
        request_id, row, hop = keep
        text = self.request_filter.lower()
        prepared = self._prepared
        if prepared is not None and prepared.model is self.model and prepared.filter_text == text:
            requests = prepared.shown  # picked on the builder thread
        else:
            requests = [r for r in self.model.requests.values() if matches(r, text)]
        self.shown_requests = requests
        index = next((i for i, r in enumerate(requests) if r.request_id == request_id), None)
        same = index is not None
        index = index if same else min(row, max(len(requests) - 1, 0))  # dropped: the row that took its place
        self.query_one("#requests", RequestsTable).show(requests, index)
        chosen = requests[index] if requests else None
        self.query_one("#waterfall", WaterfallTable).show(
            self.waterfall_of(chosen) if chosen is not None else None, self.hop_filter, hop if same else 0)
        self.show_hop()

    def show_trace(self) -> None:
        host, port = self.address
        self.title = f"servetrace · listening on {host}:{port} (OTLP/HTTP {'/v1/traces'})"
        self.sub_title = self.trace_line(self.model)
        self._show_notice(self.window.notice() if self.window.stats.exports_received
                          else f"waiting for spans: point SERVETRACE_OTLP=http://{host}:{port} at this port")
        self.show_requests()

    def _show_notice(self, text: str) -> None:
        """The warning line, laid out again only when its height changes: a screen layout
        (tens of ms at 80x24) on every swap for a count that changed would be paid by the key
        that comes next."""
        warning = self.query_one("#warning", Static)
        width = warning.content_region.width
        lines = len(Text(text).wrap(self.console, width)) if width > 0 else 0
        warning.update(text, layout=not lines or lines != self._notice_lines)
        self._notice_lines = lines
        warning.display = True
