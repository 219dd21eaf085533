"""`servetrace tui --listen`: the explorer filled by an OTLP/HTTP receiver as spans arrive.

The receiver (tracer.traces.receiver) runs in a process of its own and sends one OTLP/JSON line
per export down a pipe. Here a reader thread parses each line (the loader's reader: the same
spans a trace file gives) into a LiveWindow; a builder thread rebuilds the model from the window
when something arrived, at most every REBUILD_S, and the app swaps it in on its own thread.

The UI thread does as little as it can, since a key that arrives while it works waits for it:
the builder hands over a finished model (tracer.tui.live_window: trimmed to what the window
keeps, so it holds only what is shown; the rows of the app's filter picked), the swap is an
assignment and a redraw of the rows on screen, with no screen layout (LIVE_CSS: the explorer is
laid out for a full window from the start), and the old model goes to a thread of its own to be
freed (release_gradually). The window is bounded: the oldest requests dropped, never the
newest, and the warning line says how many.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from rich.text import Text
from textual.app import App
from textual.css.query import NoMatches
from textual.widgets import Header, Static

from tracer.traces.receiver import ReceiverProcess
from tracer.tui.app import ExplorerApp, matches
from tracer.tui.live_window import DEFAULT_WINDOW, LiveWindow, WindowStats, free_in_slices, release_gradually
from tracer.tui.loader import LoadedTrace
from tracer.tui.memory import IdleCollector, freeze_ingested
from tracer.tui.model import Request, TraceModel, build_model
from tracer.tui.timeline import Waterfall
from tracer.tui.widgets import RequestsTable, WaterfallTable

REBUILD_S = 1.0  # newest data shown at most this late (plus one build)
INPUT_QUIET_S = 0.15  # a new model waits until no key came for this long
SWITCH_INTERVAL_S = 0.0005  # sys.setswitchinterval while live: see LiveExplorerApp.on_mount
FULL_GC_GAP_S = 10.0  # see LiveExplorerApp.__init__
# Freeze the heap after each export (tracer.tui.memory.freeze_ingested), full collections thawed.
# Off: measured not to help keystrokes (bench/tui_listen_bench.py --freeze on|off, 15,000 spans/s,
# 3 x 12 s, load 2.6-4.2: on p50 / max 16.0 / 159 ms and 6 keys over 50 ms, off 11.1 / 145 ms and
# 3; generation-1 collections 182 vs 472), and Textual's cyclic garbage waits frozen until a
# collection that scans the whole heap. Nothing of ours leaks either way (test_tui_retired_model).
FREEZE_INGESTED = False
# The explorer laid out for a full window from the start: the requests table at its full height
# and every scrollbar shown, with or without rows to scroll. What it buys: no model swap changes
# a widget's size, so none lays out the screen again (rowtable.set_virtual_size). Laid out for an
# empty window, the first model (empty tables -> 200 rows) set off three screen layouts in a row
# (the tables grew and showed scrollbars, which narrowed them, and their resize asked for the next):
# 60-80 ms, and the first key pressed meanwhile waited for all of it, the one key over 50 ms of
# each bench run (bench/tui_listen_bench.py, load 0.7-0.9).
LIVE_CSS = """
#requests { height: 8; overflow-y: scroll; }
#waterfall, #side { overflow-y: scroll; }
"""
__all__ = ["DEFAULT_WINDOW", "LiveExplorerApp", "LiveFeed", "LiveWindow", "Prepared", "WindowStats", "release_gradually"]


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
            if FREEZE_INGESTED:
                freeze_ingested()

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
            # Nothing here is cyclic (a row's waterfall is a weak reference, tracer.tui.timeline):
            # each piece goes with its last reference, with no collection to wait for
            # (tests/test_tui_retired_model.py).
            free_in_slices(shown, waterfalls)
            release_gradually(model)
            del model, shown, waterfalls


class LiveExplorerApp(ExplorerApp):
    """The explorer on a live window: the model is replaced as spans arrive, the request under
    the cursor stays under it, and the warning line says what the window holds."""

    CSS = ExplorerApp.CSS + LIVE_CSS

    def __init__(self, receiver: ReceiverProcess, window: LiveWindow, rebuild_s: float = REBUILD_S) -> None:
        super().__init__([build_model(LoadedTrace([], [], window.label))])
        self.window = window
        self.address = receiver.address
        self.feed = LiveFeed(receiver, window, self._model_built, rebuild_s)
        # Garbage keeps coming while the user pauses (models replaced every REBUILD_S): one full
        # collection (the whole window, 50-200 ms) per FULL_GC_GAP_S of pause, not per tick.
        # Where the window is frozen after each export (FREEZE_INGESTED), a full collection thaws it first.
        self.collector = IdleCollector(gap_s=FULL_GC_GAP_S, thaw=FREEZE_INGESTED)
        self.models_shown = 0
        self._pending: Prepared | None = None
        self._prepared: Prepared | None = None
        self._keep: tuple[str | None, int, int] | None = None

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
        model.engine, model.engine_label, model.engine_version, model.service  # noqa: B018 -- the title and the source pane's
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
        self._show_sub_title(self.trace_line(self.model))
        self._show_notice(self.window.notice() if self.window.stats.exports_received
                          else f"waiting for spans: point SERVETRACE_OTLP=http://{host}:{port} at this port")
        self.show_requests()

    def _show_notice(self, text: str) -> None:
        """The warning line, laid out again only when its height changes: a screen layout
        (tens of ms at 80x24) on every swap for a count that changed would be paid by the key
        that comes next. Its height is read off the screen: the first notice (before any layout)
        is laid out, the first count after it only if it wraps to more lines."""
        warning = self.query_one("#warning", Static)
        region = warning.content_region
        lines = len(Text(text).wrap(self.console, region.width)) if region.width > 0 else 0
        warning.update(text, layout=not lines or lines != region.height or not warning.display)
        warning.display = True

    def _show_sub_title(self, text: str) -> None:
        """The sub-title (what the model holds), redrawn in place.

        What it buys: Textual's Header redraws its title line with a screen layout on every change
        of the title or sub-title (Static.update's default), and the live sub-title's counts change
        on every swap: a layout and a repaint of the whole screen, 6-10 ms of the UI thread at
        80x24 and 160x48 (load ~3), which a key pressed just after a swap waited for. The title
        line is one line, cut with an ellipsis, whatever it says: nothing else moves. The
        reactive is set without its watchers (the Header's), and the line redrawn as the Header
        would (Header.format_title)."""
        if text == self.sub_title:
            return
        try:
            header = self.query_one(Header)
            line = header.query_one("HeaderTitle", Static)  # the Header's title line (textual 8.2.8)
        except NoMatches:  # not mounted yet, or a Textual whose Header is built otherwise
            self.sub_title = text
            return
        self.set_reactive(App.sub_title, text)
        line.update(header.format_title(), layout=False)
