"""When the cyclic garbage collector runs, so that it does not run inside a keystroke.

A trace holds hundreds of thousands of small objects, kept while the explorer runs. Each
collection rescans what it finds in the generations it collects, so:
- while a trace is read, the collector is held off, and what was made is then frozen (gc.freeze):
  no later collection scans it again;
- while the explorer runs, full (generation 2) collections wait until the user pauses: one
  scans every object made since the trace was frozen (tens of thousands once a filter has
  summarised every request: 20-50 ms, more than a keystroke may take). Young collections
  (generations 0 and 1, about a millisecond) run as usual.
"""
from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from typing import Iterator

# Generation-1 collections before a full one: never, in practice (IdleCollector runs it).
_FULL_COLLECTIONS_DEFERRED = 1_000_000


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic GC while many small acyclic objects are created: each collection
    would rescan all of them. What was made meanwhile is then frozen (gc.freeze): it is the
    trace, kept while the explorer runs, and the first collection after re-enabling would
    otherwise scan all of it at once."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def freeze_ingested() -> None:
    """After the live explorer's reader has added an export to its window: freeze what exists
    (gc.freeze), the window's new spans included, so that no later young or full collection
    scans them again.

    What it buys: the window holds tens of thousands of long-lived spans, and at 10,000 spans/s
    every export brings 512 more; unfrozen, each young collection that promotes them and each
    full collection scans them while holding the GIL, and the UI thread waits. Frozen, they
    cost a collection nothing. What makes it safe: nothing the live explorer retires is cyclic
    (tests/test_tui_retired_model.py: a retired model goes with its last reference, frozen or
    not). What it costs: cyclic garbage made before a freeze and not yet collected (Textual's
    own: a Strip is in its own caches; ~26,000 objects in 9 s of keys every 0.1 s) is frozen with
    it, and waits for the live IdleCollector's next full collection (in a pause, or forced after
    max_deferred young ones), which thaws everything first (thaw=True) and so scans the whole
    heap (50-81 ms CPU at the end of a bench run vs 50-65 ms unfrozen, load 2.4-3.9).
    Measured (bench/tui_listen_bench.py, 10,000 spans/s, 8 s, load 2.4-3.9, two runs each):
    generation-1 collections 89-90 -> 41-46 per run; the keys over 50 ms had 1-25 ms of
    collections inside them either way, so the freeze is not what the key tail waits for; at
    15,000 spans/s it did no better (tracer.tui.live.FREEZE_INGESTED, where it is switched: off)."""
    gc.freeze()


class IdleCollector:
    """Defers full collections to moments without input: `start()` when the app starts,
    `input_seen()` on every key or mouse event, `tick()` from a timer, `stop()` on exit
    (the thresholds are the process's, and tests run many apps in one process)."""

    def __init__(self, idle_s: float = 1.0, max_deferred: int = 500, gap_s: float = 0.0, thaw: bool = False) -> None:
        self.idle_s = idle_s
        # A full collection first unfreezes what freeze_ingested froze, so that cyclic garbage
        # frozen meanwhile is found (the live explorer). The forced one mid-input too: else a key
        # held down would keep Textual's frozen garbage (~3,000 objects/s) for as long as it is.
        self.thaw = thaw
        # Generation-1 passes without a full one, after which a full one runs even mid-input
        # (a key held down for minutes must not grow memory without bound).
        self.max_deferred = max_deferred
        # At least this long between two full collections run in a pause: where garbage keeps
        # coming while the user pauses (a live window), one every tick would be running, tens
        # of ms each, whenever the user's next key comes.
        self.gap_s = gap_s
        self.last_input = time.monotonic()
        self._last_full = 0.0
        self._saved: tuple[int, ...] | None = None

    def start(self) -> None:
        gc.freeze()  # what exists now (the trace, the app) is kept while the explorer runs
        if self._saved is None:
            self._saved = gc.get_threshold()
            young, middle = self._saved[:2]
            gc.set_threshold(young, middle, _FULL_COLLECTIONS_DEFERRED)

    def stop(self) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def input_seen(self) -> None:
        self.last_input = time.monotonic()

    def tick(self) -> None:
        """Run the deferred full collection if the user has paused (or it waited too long)."""
        pending = gc.get_count()[2]  # generation-1 passes since the last full collection
        if not pending:
            return
        now = time.monotonic()
        paused = now - self.last_input >= self.idle_s and now - self._last_full >= self.gap_s
        if paused or pending >= self.max_deferred:
            if self.thaw:
                gc.unfreeze()
                gc.collect()
                gc.freeze()
            else:
                gc.collect()
            self._last_full = time.monotonic()
