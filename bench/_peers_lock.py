"""/tmp/servetrace-live.lock, the machine's one-live-server-at-a-time lock (helper rules; the live
tests take it with flock(1)), taken from Python: fcntl.flock is the same flock(2) lock."""
from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LOCK = "/tmp/servetrace-live.lock"
_held = [False]  # this process holds it: a nested live_lock() is a no-op (flock(2) would deadlock on a second open)


@contextmanager
def live_lock(say: Callable[[str], None], path: str = LOCK) -> Iterator[float]:
    """Hold the lock for the block; yields the seconds waited for it."""
    if _held[0]:
        yield 0.0
        return
    with open(path, "a") as handle:
        start = time.monotonic()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"    waiting for {path} (another live server runs)")
            # Blocking, as flock(1) waits: a waiter that polls loses every hand-over to the blocked ones.
            fcntl.flock(handle, fcntl.LOCK_EX)
            say(f"    got {path} after {time.monotonic() - start:.0f} s")
        _held[0] = True
        try:
            yield time.monotonic() - start
        finally:
            _held[0] = False
            fcntl.flock(handle, fcntl.LOCK_UN)
