"""The hook installer on every kind of callable, with a catalog written for the test.

The targets live in a module this test writes to disk, so the post-import path (hooking a
module when it is first imported) is exercised too. Spans are read back from the trace file.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import textwrap

import pytest

from tracer.instrument import hooks, otel, spans
from tracer.catalog.hops import load_catalog, parse_catalog
from tracer.traces.trace_file import read_trace_file

MODULE = "servetrace_hook_targets"
SOURCE = '''
import asyncio


class Engine:
    def __init__(self):
        self.queue = []

    def add(self, request_id, n=1):
        self.queue.append(request_id)
        return len(self.queue)

    def nested_add(self, request_id):
        return self.add(request_id + "-inner")

    @classmethod
    def build(cls, size):
        return size * 2

    @staticmethod
    def twice(x):
        return 2 * x

    async def fetch(self, request_id):
        await asyncio.sleep(0)
        return request_id.upper()

    def stream(self, n):
        total = 0
        for i in range(n):
            got = yield i
            total += got or 0
        return total

    async def astream(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    def fail(self, request_id):
        raise RuntimeError("engine failure " + request_id)


def helper(x):
    return x + 1
'''

TARGETS = {
    "engine.enqueue": [f"{MODULE}:Engine.add"],
    "engine.step": [f"{MODULE}:Engine.build"],
    "scheduler.schedule": [f"{MODULE}:Engine.twice", f"{MODULE}:helper"],
    "request.render": [f"{MODULE}:Engine.fetch"],
    "model.execute": [f"{MODULE}:Engine.stream"],
    "detokenize": [f"{MODULE}:Engine.astream"],
    "kv.free": [f"{MODULE}:Engine.fail"],
}
SCOPES = {"engine.step": "step", "scheduler.schedule": "step", "model.execute": "step"}


def catalog():
    return parse_catalog({
        "engines": {"test": {"package": MODULE}},
        "hops": [
            {"name": hop, "scope": SCOPES.get(hop, "request"), "meaning": hop, "targets": {"test": targets},
             "roles": sorted(load_catalog().hop(hop).roles)}  # the trace shape comes from the hops' roles
            for hop, targets in TARGETS.items()
        ],
    })


def request_id_of(args):
    return {"gen_ai.request.id": args.get("request_id")}


@pytest.fixture
def target_module(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(MODULE, None)
    yield tmp_path
    sys.modules.pop(MODULE, None)


@pytest.fixture
def traced(target_module):
    trace_path = target_module / "trace.jsonl"
    otel.configure(trace_file=trace_path, engine="test", batch=False)
    extractors = {hop: (request_id_of, None) for hop in TARGETS}
    extractors["model.execute"] = (None, lambda args, result: {"servetrace.total": result})
    report = hooks.install("test", catalog=catalog(), extractors=extractors)
    try:
        yield trace_path, report
    finally:
        hooks.uninstall()
        otel.shutdown()
        spans.registry.clear()


def test_a_module_imported_after_install_is_hooked_on_import(traced):
    _, report = traced
    assert MODULE not in sys.modules
    assert len(report.deferred) == 8 and not report.installed
    module = importlib.import_module(MODULE)
    assert hasattr(module.Engine.add, hooks.MARKER)
    assert sorted(hooks.installed("test")) == sorted(t for ts in TARGETS.values() for t in ts)
    assert hooks.deferred() == []


def test_every_kind_of_callable_keeps_its_behaviour_and_emits_a_span(traced):
    trace_path, _ = traced
    module = importlib.import_module(MODULE)
    engine = module.Engine()
    assert engine.add("r1") == 1
    assert module.Engine.build(3) == 6 and engine.build(4) == 8
    assert module.Engine.twice(5) == 10 and engine.twice(6) == 12
    assert module.helper(1) == 2
    assert asyncio.run(engine.fetch("r1")) == "R1"
    assert asyncio.iscoroutinefunction(module.Engine.fetch)

    generator = engine.stream(3)
    assert next(generator) == 0
    assert generator.send(5) == 1
    assert generator.send(7) == 2
    with pytest.raises(StopIteration) as stop:
        generator.send(1)
    assert stop.value.value == 13

    async def consume():
        return [i async for i in engine.astream(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="engine failure r1"):
        engine.fail("r1")

    trace = read_trace_file(trace_path)
    names = [s.name for s in trace.spans]
    assert names.count("engine.step") == 2
    assert names.count("scheduler.schedule") == 3
    assert names.count("request.render") == 1
    (stream,) = trace.named("model.execute")
    assert stream.attributes["servetrace.total"] == 13  # the generator's return value
    (astream,) = trace.named("detokenize")
    assert astream.end_ns >= astream.start_ns
    (failed,) = trace.named("kv.free")
    assert failed.status == "ERROR" and "engine failure r1" in failed.status_message
    assert [e.name for e in failed.events] == ["exception"]

    # Request-scoped spans join the request's trace: r1's root is its engine.enqueue.
    (root,) = trace.named("engine.enqueue")
    for span in (trace.named("request.render")[0], failed, astream):
        if span.request_id == "r1":
            assert (span.trace_id, span.parent_span_id) == (root.trace_id, root.span_id)


def test_the_same_hop_nested_opens_one_span(traced):
    trace_path, _ = traced
    module = importlib.import_module(MODULE)
    module.Engine.add = module.Engine.add  # no-op: the class attribute is the wrapper
    engine = module.Engine()
    # nested_add is not a target; add is: one span per outer call.
    engine.nested_add("r2")
    hooks.install("test", catalog=catalog(), extractors={})  # a second install changes nothing
    engine.add("r3")
    trace = read_trace_file(trace_path)
    assert [s.request_id for s in trace.named("engine.enqueue")] == ["r2-inner", "r3"]


def test_uninstall_restores_every_original(traced):
    module = importlib.import_module(MODULE)
    from_imported = module.helper  # as `from servetrace_hook_targets import helper` would
    holder = type(sys)("servetrace_holder")
    holder.helper = from_imported
    sys.modules["servetrace_holder"] = holder
    try:
        assert hasattr(from_imported, hooks.MARKER)
        assert hooks.uninstall("test") == 8
        assert not hasattr(module.helper, hooks.MARKER)
        assert not hasattr(holder.helper, hooks.MARKER)
        assert isinstance(module.Engine.__dict__["build"], classmethod)
        assert isinstance(module.Engine.__dict__["twice"], staticmethod)
        assert not hasattr(module.Engine.__dict__["build"].__func__, hooks.MARKER)
        assert not hasattr(module.Engine.add, hooks.MARKER)
    finally:
        del sys.modules["servetrace_holder"]


def test_an_extractor_that_raises_never_breaks_the_call(target_module, caplog):
    trace_path = target_module / "trace.jsonl"
    otel.configure(trace_file=trace_path, engine="test", batch=False)

    def broken(*args):
        raise KeyError("no such field")

    hooks.install("test", catalog=catalog(), extractors={"engine.enqueue": (broken, broken)})
    try:
        module = importlib.import_module(MODULE)
        engine = module.Engine()
        with caplog.at_level(logging.WARNING, logger="tracer.instrument.spans"):
            assert [engine.add(f"r{i}") for i in range(3)] == [1, 2, 3]
        warnings = [r for r in caplog.records if "extractor" in r.getMessage()]
        assert len(warnings) == 2  # once for the before phase, once for after: not once per call
        enqueues = read_trace_file(trace_path).named("engine.enqueue")
        assert len(enqueues) == 3
        # Each span says its extractor failed, and how (the after phase's message is the last one).
        assert all(s.attributes["servetrace.extractor.error"] == "after: KeyError: 'no such field'" for s in enqueues)
    finally:
        hooks.uninstall()
        otel.shutdown()


def test_without_tracing_configured_the_hooks_pass_through(target_module):
    hooks.install("test", catalog=catalog(), extractors={})
    try:
        module = importlib.import_module(MODULE)
        assert otel.active_tracer() is None
        assert module.Engine().add("r1") == 1
        assert list(module.Engine().stream(2)) == [0, 1]
    finally:
        hooks.uninstall()


def test_a_target_that_does_not_exist_is_reported_not_raised(target_module):
    importlib.import_module(MODULE)
    broken = parse_catalog({
        "engines": {"test": {"package": MODULE}},
        "hops": [{"name": "engine.step", "scope": "step", "targets": {"test": [f"{MODULE}:Engine.missing"]}}],
    })
    report = hooks.install("test", catalog=broken, extractors={})
    assert report.installed == []
    assert "Engine.missing is not defined on Engine" in report.failed[f"{MODULE}:Engine.missing"]
