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


class IdleCollector:
    """Defers full collections to moments without input: `start()` when the app starts,
    `input_seen()` on every key or mouse event, `tick()` from a timer, `stop()` on exit
    (the thresholds are the process's, and tests run many apps in one process)."""

    def __init__(self, idle_s: float = 1.0, max_deferred: int = 500, gap_s: float = 0.0) -> None:
        self.idle_s = idle_s
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
            gc.collect()
            self._last_full = time.monotonic()
