"""A fourth engine is data: a catalog entry and one extractor module, nothing else.

The test writes a tiny engine ("toy", a queue and a step loop) and its extractor module to
tmp_path, adds the engine to a temporary copy of tracer/catalog/hops.yaml, and then expects
what docs/adding-an-engine.md promises, without editing any module of servetrace:
- hooks.install + otel.configure trace it: request traces rooted at engine.enqueue, one trace
  per engine step linking to the requests in its batch, the forward pass nested in its step;
- `servetrace hops --catalog TMP --engine toy` lists its targets at their file:line;
- the explorer's source pane shows its code for a hop;
- replay names it as an engine without a runner (a clear error, not a crash).
The extractor module stands where tracer/instrument/extractors/toy.py would (registered in
sys.modules for the test's duration, so the default lookup by engine name is what finds it).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest
import yaml

from tracer.catalog.hops import CATALOG_PATH, load_catalog
from tracer.instrument import hooks, otel, spans
from tracer.traces.schema import BATCH_IDS, LINK_KIND, LINK_REQUEST, REQUEST_ID
from tracer.traces.trace_file import read_trace_file

TOY_ENGINE = '''
"""A toy engine: requests wait in a queue; each step runs all of them for one token."""


class ToyEngine:
    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.running: dict[str, list[int]] = {}

    def add_request(self, request_id: str, prompt: list[int]) -> None:
        self.running[request_id] = list(prompt)

    def schedule(self) -> list[str]:
        return [rid for rid, tokens in self.running.items() if len(tokens) < self.max_tokens]

    def forward(self, batch: list[list[int]]) -> list[int]:
        return [sum(tokens) % 97 for tokens in batch]

    def step(self) -> list[str]:
        batch = self.schedule()
        for rid, token in zip(batch, self.forward([self.running[rid] for rid in batch])):
            self.running[rid].append(token)
        return batch
'''

TOY_EXTRACTORS = '''
"""Span attributes of the toy engine's hops (what tracer/instrument/extractors/toy.py would hold)."""
from tracer.traces.schema import BATCH_IDS, BATCH_SIZE, REQUEST_ID


def enqueue_before(args):
    return {REQUEST_ID: args["request_id"]}


def schedule_after(args, result):
    return {BATCH_IDS: list(result), BATCH_SIZE: len(result)}


BEFORE = {"engine.enqueue": enqueue_before}
AFTER = {"scheduler.schedule": schedule_after}
'''

TARGETS = {
    "engine.enqueue": "toy_engine.core:ToyEngine.add_request",
    "engine.step": "toy_engine.core:ToyEngine.step",
    "scheduler.schedule": "toy_engine.core:ToyEngine.schedule",
    "model.forward": "toy_engine.core:ToyEngine.forward",
}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy engine importable as toy_engine.core, its extractors where the engine name finds
    them, and a catalog at tmp_path/hops.yaml that lists it."""
    package = tmp_path / "src" / "toy_engine"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text(textwrap.dedent(TOY_ENGINE))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))

    extractor_file = tmp_path / "toy_extractors.py"
    extractor_file.write_text(textwrap.dedent(TOY_EXTRACTORS))
    spec = importlib.util.spec_from_file_location("tracer.instrument.extractors.toy", extractor_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "tracer.instrument.extractors.toy", module)

    data = yaml.safe_load(CATALOG_PATH.read_text())
    data["engines"]["toy"] = {"package": "toy_engine", "pinned": False, "description": "a toy engine (tests)"}
    for hop in data["hops"]:
        if hop["name"] in TARGETS:
            hop.setdefault("targets", {})["toy"] = [TARGETS[hop["name"]]]
    catalog_path = tmp_path / "hops.yaml"
    catalog_path.write_text(yaml.safe_dump(data, sort_keys=False))
    yield catalog_path
    sys.modules.pop("toy_engine.core", None)
    sys.modules.pop("toy_engine", None)


def test_the_toy_engine_is_traced_by_the_catalog_hooks(toy, tmp_path):
    catalog = load_catalog(toy)
    trace_path = tmp_path / "toy-trace.jsonl"
    otel.configure(trace_file=trace_path, engine="toy", batch=False)
    try:
        report = hooks.install("toy", catalog=catalog, import_modules=True)
        assert report.failed == {}
        assert sorted(report.installed) == sorted(TARGETS.values())
        from toy_engine.core import ToyEngine

        engine = ToyEngine(max_tokens=5)
        engine.add_request("r1", [1, 2, 3])
        engine.step()
        engine.add_request("r2", [4])
        while engine.step():
            pass
        otel.flush()
    finally:
        hooks.uninstall("toy")
        otel.shutdown()
        spans.registry.clear()

    trace = read_trace_file(trace_path)
    assert trace.skipped == []
    enqueues = {s.attributes[REQUEST_ID]: s for s in trace.named("engine.enqueue")}
    assert set(enqueues) == {"r1", "r2"}
    assert all(s.parent_span_id is None for s in enqueues.values())  # each the root of its request's trace
    assert len({s.trace_id for s in enqueues.values()}) == 2

    steps = trace.named("engine.step")
    # Up to 5 tokens: r1 (3 in the prompt) runs in steps 1-2, r2 (1) in steps 2-5; step 6 finds none.
    assert len(steps) == 6
    for step in steps:
        assert step.parent_span_id is None
        children = {s.name for s in trace.by_trace()[step.trace_id] if s.parent_span_id == step.span_id}
        assert "scheduler.schedule" in children
    first = steps[0]
    linked = {link.trace_id for link in first.links if link.attributes.get(LINK_KIND) == LINK_REQUEST}
    assert linked == {enqueues["r1"].trace_id}  # the batch role copied the batch onto its step
    assert first.attributes[BATCH_IDS] == ["r1"]
    second_links = {link.trace_id for link in steps[1].links}
    assert second_links == {enqueues["r1"].trace_id, enqueues["r2"].trace_id}

    forwards = trace.named("model.forward")
    assert len(forwards) == 6
    assert {f.trace_id for f in forwards} == {s.trace_id for s in steps}  # nested in their steps
    assert {s.resource.get("servetrace.engine") for s in trace.spans} == {"toy"}


def test_an_engine_without_extractors_is_a_reported_install_failure(toy, monkeypatch):
    catalog = load_catalog(toy)
    monkeypatch.delitem(sys.modules, "tracer.instrument.extractors.toy")  # the catalog entry alone
    try:
        report = hooks.install("toy", catalog=catalog)
    finally:
        hooks.uninstall("toy")
    assert report.installed == [] and set(report.failed) == set(TARGETS.values())
    assert all("no extractors for toy" in reason for reason in report.failed.values())


def test_servetrace_hops_lists_the_toy_engine(toy, capsys):
    from tracer.cli import main

    assert main(["hops", "--catalog", str(toy), "--engine", "toy", "--json"]) == 0
    rows = [row for row in json.loads(capsys.readouterr().out)["targets"] if row["target"]]
    assert {row["hop"]: row["target"] for row in rows} == TARGETS
    for row in rows:
        assert row["engine"] == "toy"
        assert row["where"].startswith("toy_engine/core.py:"), row
    # The forward pass is a method of ToyEngine: its line is the def's.
    forward = next(row for row in rows if row["hop"] == "model.forward")
    line = int(forward["where"].rsplit(":", 1)[1])
    assert textwrap.dedent(TOY_ENGINE).splitlines()[line - 1].strip().startswith("def forward(")


def test_the_explorer_source_pane_shows_the_toy_code(toy, monkeypatch):
    from tracer.tui import sources

    catalog = load_catalog(toy)
    # hop_sources reads the packaged catalog (it takes none as an argument yet): point it at ours.
    monkeypatch.setattr(sources, "load_catalog", lambda path=None: catalog)
    sources.hop_sources.cache_clear()
    try:
        views = sources.hop_sources("engine.step")["toy"]
    finally:
        sources.hop_sources.cache_clear()
    assert len(views) == 1 and views[0].error == ""
    view = views[0]
    assert view.file == "toy_engine/core.py"
    assert view.source.lstrip().startswith("def step(self)")
    assert "toy" in view.title and "toy_engine/core.py" in view.title


def test_replay_names_the_toy_engine_as_one_without_a_runner(toy):
    from tracer.replay.config import ReplayConfig
    from tracer.replay.runners import NoReplayRunner, make_scheduler_runner, replay_engines

    catalog = load_catalog(toy)
    assert "toy" in catalog.engines and "toy" not in replay_engines(catalog)
    with pytest.raises(NoReplayRunner, match="engine 'toy' has no scheduler runner for replay"):
        make_scheduler_runner("toy", ReplayConfig(), catalog=catalog)
    with pytest.raises(NoReplayRunner, match="unknown engine 'nope'"):
        make_scheduler_runner("nope", ReplayConfig(), catalog=catalog)
