"""A live window's retired model is freed by reference counting alone (tracer.tui.live): with the
cyclic collector off, once LiveFeed's release thread has let go of a model the UI showed (its
requests summarised, waterfalls drawn and stepped through, the "why" index built), none of its
objects is left: no collection has to find them, so none has to run, and a frozen heap
(tracer.tui.memory.freeze_ingested) does not keep them."""
from __future__ import annotations

import gc
import re
import weakref
from pathlib import Path

import pytest

from tracer.tui.live import LiveFeed, LiveWindow
from tracer.tui.memory import freeze_ingested
from tracer.tui.records import Span
from tracer.tui.timeline import build_waterfall

SAMPLE = Path(__file__).parent / "data" / "live-vllm.jsonl"
MARK = b"0ddc7c1e"  # this test's copy of the sample: trace ids no other test's spans have


def _marked(line: bytes) -> bytes:
    return re.sub(rb'"traceId":"[0-9a-f]{8}', b'"traceId":"' + MARK, line)


@pytest.fixture
def no_cyclic_gc():
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def _spans_of(trace_ids: set[str]) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Span and o.trace_id in trace_ids)


def _show_and_retire(plant_cycle: bool, frozen: bool) -> tuple[list[weakref.ref], set[str]]:
    """A model as the live app uses it, then retired through LiveFeed's release path; weak
    references to its parts and its trace ids."""
    window = LiveWindow(limit=3)  # the sample holds 5 requests: two are dropped by the build
    for line in SAMPLE.read_bytes().splitlines():
        window.add_line(_marked(line))
    model = window.build()
    trace_ids = {span.trace_id for span in model.spans}
    assert all(t.startswith(MARK.decode()) for t in trace_ids)
    waterfalls = []
    for request in model.requests.values():
        request.label, request.ids, request.summary  # noqa: B018 -- the requests table's reads
        waterfall = build_waterfall(model, request)
        for row in waterfall.rows:  # the state panel, stepping through every hop
            row.state  # noqa: B018
        waterfall.processes, waterfall.start_ns  # noqa: B018
        waterfalls.append(waterfall)
    for step in model.steps:
        step.scheduled_tokens  # noqa: B018
    model.why.timeline()
    if plant_cycle:  # planted: the hops' states holding the waterfall's rows (a cycle through the rows)
        waterfalls[0].hop_states.hops.append(waterfalls[0].rows)
    refs = [weakref.ref(o) for o in (model, *model.requests.values(), *model.steps, *waterfalls)]
    shown = list(model.requests.values())
    assert len(shown) == 3 and model.steps and _spans_of(trace_ids) == len(model.spans) > 100
    # The feed's release path (its window is another: the feed, alive with its threads, would keep it).
    feed = LiveFeed(receiver=None, window=LiveWindow(), on_model=lambda m: None)  # type: ignore[arg-type]
    if frozen:
        freeze_ingested()  # as the live reader does after each export: the model is in no generation
    feed.retire(model, shown, waterfalls)
    feed._retired.put(None)  # the feed stopping: _release returns once the model is freed
    del model, shown, waterfalls, request, waterfall, row, step, window  # the window's spans go too
    feed._release()
    gc.unfreeze()  # what is left of the frozen heap back in a generation, where _spans_of sees it
    return refs, trace_ids


@pytest.mark.parametrize("frozen", [False, True], ids=["unfrozen", "frozen"])
@pytest.mark.parametrize("plant_cycle", [False, True], ids=["as_built", "planted_cycle"])
def test_a_retired_model_is_freed_by_reference_counting_alone(no_cyclic_gc, plant_cycle, frozen):
    refs, trace_ids = _show_and_retire(plant_cycle, frozen)
    alive = [r() for r in refs if r() is not None]
    spans = _spans_of(trace_ids)
    if not plant_cycle:
        assert alive == [] and spans == 0
    else:  # caught: the waterfall, its request and the spans it reaches wait for a collection
        assert alive and spans > 0
        del alive
        gc.collect()
        assert all(r() is None for r in refs) and _spans_of(trace_ids) == 0
