"""`servetrace tui --listen`: the explorer filled by an OTLP/HTTP receiver as spans arrive.

The receiver (tracer.traces.receiver) runs in a process of its own and sends one OTLP/JSON line
per export down a pipe. Here a reader thread parses each line (the loader's reader: the same
spans a trace file gives) into a LiveWindow; a builder thread rebuilds the model from the window
when something arrived, at most every REBUILD_S, and the app swaps it in on its own thread. The
model is built from scratch each time (tracer.tui.model is one pass over the spans, ~6 µs per
span): a window of a few hundred requests rebuilds in a fraction of a second, off the UI thread.

The window is bounded: past `limit` requests the oldest are dropped (their traces, and the step
traces that ended before the oldest kept request began), never the newest, and the app says so.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable

from tracer.traces.receiver import ReceiverProcess
from tracer.traces.trace_file import SchemaVersionError, SkippedLine
from tracer.tui.app import ExplorerApp, matches
from tracer.tui.loader import LoadedTrace, _parse_line
from tracer.tui.model import TraceModel, build_model
from tracer.tui.records import Span
from tracer.tui.widgets import RequestsTable, WaterfallTable

DEFAULT_WINDOW = 200  # requests kept; a vLLM request is ~150 spans with its steps
REBUILD_S = 1.0  # newest data shown at most this late (plus one build)
INPUT_QUIET_S = 0.15  # a new model waits until no key came for this long
SWITCH_INTERVAL_S = 0.0005  # sys.setswitchinterval while live: see LiveExplorerApp.on_mount
_start, _end = attrgetter("start_ns"), attrgetter("end_ns")


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
        """The model of the window as it is now, trimmed to the newest `limit` requests (the
        traces of those dropped leave the window, so the next build does not see them)."""
        with self._lock:
            spans = [span for members in self.traces.values() for span in members]
            skipped = ([SkippedLine(0, f"{self.stats.lines_skipped} export(s) unreadable: {self.stats.last_error}")]
                       if self.stats.lines_skipped else [])
        spans.sort(key=_end, reverse=True)  # by start, longest first on ties (as the loader sorts)
        spans.sort(key=_start)
        model = build_model(LoadedTrace(spans, skipped, self.label))
        excess = len(model.requests) - self.limit
        if excess > 0:
            self._drop(model, excess)
        return model

    def _drop(self, model: TraceModel, excess: int) -> None:
        by_start = sorted(model.requests.values(), key=attrgetter("start_ns"))
        dropped, kept = by_start[:excess], by_start[excess:]
        gone = {span.trace_id for request in dropped for span in request.spans}
        horizon = kept[0].start_ns
        # Steps no kept request can have taken part in: ended before the oldest kept one began.
        gone.update(span.trace_id for step in model.steps if step.end_ns < horizon for span in step.spans)
        for request in dropped:
            del model.requests[request.request_id]
        model.steps = [step for step in model.steps if step.end_ns >= horizon]
        with self._lock:
            for trace_id in gone:
                self.traces.pop(trace_id, None)
            self.stats.requests_dropped += len(dropped)

    def notice(self) -> str:
        stats = self.stats
        text = f"{stats.spans_received:,} spans received"
        if stats.requests_dropped:
            text += f" · showing the last {self.limit} requests; {stats.requests_dropped:,} dropped"
        if stats.lines_skipped:
            text += f" · {stats.lines_skipped} unreadable export(s): {stats.last_error[:80]}"
        return text


class LiveFeed:
    """Reads the receiver's lines into a window and rebuilds models; `on_model` is called (on
    the builder thread) with each new one."""

    def __init__(self, receiver: ReceiverProcess, window: LiveWindow, on_model: Callable[[TraceModel], None],
                 rebuild_s: float = REBUILD_S) -> None:
        self.receiver, self.window, self.on_model, self.rebuild_s = receiver, window, on_model, rebuild_s
        self._stop = threading.Event()
        self.build_s: list[float] = []  # each rebuild's time (the bench reports them)
        self._threads = [threading.Thread(target=self._read, name="otlp-lines", daemon=True),
                         threading.Thread(target=self._build, name="live-model", daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.window.changed.set()
        self.receiver.stop()

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


class LiveExplorerApp(ExplorerApp):
    """The explorer on a live window: the model is replaced as spans arrive, the request under
    the cursor stays under it, and the warning line says what the window holds."""

    def __init__(self, receiver: ReceiverProcess, window: LiveWindow, rebuild_s: float = REBUILD_S) -> None:
        super().__init__([build_model(LoadedTrace([], [], window.label))])
        self.window = window
        self.address = receiver.address
        self.feed = LiveFeed(receiver, window, self._model_built, rebuild_s)
        self.models_shown = 0

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

    def _model_built(self, model: TraceModel) -> None:
        try:
            self.call_from_thread(self._offer, model)
        except RuntimeError:
            pass  # the app is closing

    def _offer(self, model: TraceModel) -> None:
        """Swap the new model in when the keyboard has been quiet for INPUT_QUIET_S: a swap
        redraws both tables (~10 ms, more while the builder competes for the GIL), and a key
        that arrives during one waits for it."""
        self._pending = model
        quiet = time.monotonic() - self.collector.last_input
        if quiet >= INPUT_QUIET_S:
            self._pending = None
            self.swap_model(model)
        else:
            self.set_timer(INPUT_QUIET_S - quiet, self._swap_pending)

    def _swap_pending(self) -> None:
        model = getattr(self, "_pending", None)
        if model is not None:
            self._offer(model)

    def swap_model(self, model: TraceModel) -> None:
        """Show the new model; the request and the hop under the cursors stay under them."""
        requests = self.query_one("#requests", RequestsTable)
        waterfall = self.query_one("#waterfall", WaterfallTable)
        current = requests.current()
        self._keep = (current.request_id if current is not None else None, requests.cursor_row, waterfall.cursor_row)
        self.models[self.active] = model
        self.waterfalls.clear()
        self.show_trace()
        self.models_shown += 1

    def show_requests(self) -> None:
        keep, self._keep = getattr(self, "_keep", None), None
        if keep is None:
            super().show_requests()
            return
        request_id, row, hop = keep
        text = self.request_filter.lower()
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
        super().show_trace()
        host, port = self.address
        self.title = f"servetrace · listening on {host}:{port} (OTLP/HTTP {'/v1/traces'})"
        warning = self.query_one("#warning")
        warning.update(self.window.notice() if self.window.stats.exports_received
                       else f"waiting for spans: point SERVETRACE_OTLP=http://{host}:{port} at this port")
        warning.display = True
