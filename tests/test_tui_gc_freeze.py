"""The live explorer keeps its window out of the garbage collector's scans (tracer.tui.memory):
after each export the reader freezes what exists, so young and full collections mid-input skip
the window's spans; a full collection in a pause thaws first, so cyclic garbage frozen meanwhile
(Textual's: none of the explorer's, tests/test_tui_retired_model.py) is still freed."""
from __future__ import annotations

import gc
import weakref

import pytest

from tracer.tui.memory import IdleCollector, freeze_ingested
from tracer.tui.live_window import LiveWindow

SAMPLE = "tests/data/live-vllm.jsonl"


@pytest.fixture(autouse=True)
def thawed():
    yield
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.other = self  # a reference cycle: only the cyclic collector frees it


def _tracked_ids() -> set[int]:
    return {id(o) for o in gc.get_objects()}  # generations 0-2; frozen objects are in none


def test_the_window_is_frozen_after_each_export_and_collections_skip_it():
    window = LiveWindow(200)
    with open(SAMPLE, "rb") as fh:
        for line in fh:
            window.add_line(line)
            freeze_ingested()
    kept = [o for members in window.traces.values() for span in members
            for o in (span, members) if gc.is_tracked(o)]
    assert len(kept) > 300 and gc.get_freeze_count() >= len(kept)
    assert not {id(o) for o in kept} & _tracked_ids()
    gc.collect(1)  # a young collection mid-input: the frozen window is not part of it
    assert not {id(o) for o in kept} & _tracked_ids()
    gc.unfreeze()  # planted: without the freeze, the window is in the collector's generations
    assert {id(o) for o in kept} <= _tracked_ids()


@pytest.mark.parametrize("thaw", [True, False])
def test_a_full_collection_in_a_pause_frees_cyclic_garbage_frozen_meanwhile(thaw):
    node = _Node()
    alive = weakref.ref(node)
    del node  # garbage now, but frozen with the next export before any collection found it
    freeze_ingested()
    collector = IdleCollector(idle_s=0.0, thaw=thaw)
    collector.start()
    try:
        gc.collect(1)  # a young collection also increments the full-collection count tick waits for
        collector.tick()  # the user has paused (idle_s=0): the deferred full collection runs
    finally:
        collector.stop()
    # Without the thaw (the static explorer's collector) frozen garbage stays: why the live one thaws.
    assert (alive() is None) == thaw


def test_a_forced_full_collection_mid_input_thaws_too():
    """A key held down: no pause comes, and the collection forced after max_deferred young ones
    still frees the cyclic garbage frozen meanwhile (else it would grow for as long as the key)."""
    node = _Node()
    alive = weakref.ref(node)
    del node
    freeze_ingested()
    collector = IdleCollector(idle_s=3600.0, max_deferred=1, thaw=True)
    collector.start()
    try:
        collector.input_seen()
        gc.collect(1)
        collector.tick()
    finally:
        collector.stop()
    assert alive() is None
