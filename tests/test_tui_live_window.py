"""The live window of `servetrace tui --listen` (tracer.tui.live_window): what it keeps is what a
build of the kept traces gives, whether dropped in the build or ahead of it; its models are
not frozen; a model is released without touching the window."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracer.tui.live_window import LiveWindow, release_gradually

DATA = Path(__file__).parent / "data"
SAMPLE, SGLANG = DATA / "live-vllm.jsonl", DATA / "live-sglang.jsonl"
_IDS = re.compile(r'"(traceId|spanId|parentSpanId)":"([0-9a-f]{4})')
_TIMES = re.compile(r'"((?:start|end)TimeUnixNano|timeUnixNano)":"(\d+)"')


def copies(sample: Path, n: int) -> list[bytes]:
    """The sample's exports `n` times over, each copy with ids of its own and a later clock (one
    copy's span later), its request ids suffixed: a server that served the same requests n times."""
    text = sample.read_text()
    numbers = [int(m[2]) for m in _TIMES.finditer(text)]
    shift = max(numbers) - min(numbers) + 1
    ids = sorted({m[1] for m in re.finditer(r'"(?:gen_ai\.request\.id|rid|servetrace\.request\.external_id|'
                                             r'http\.request\.header\.x-request-id)","value":\{"stringValue":"([^"]+)"', text)},
                 key=len, reverse=True)
    request_ids = re.compile('"(' + "|".join(map(re.escape, ids)) + ')"')
    out = []
    for k in range(n):
        copy = _IDS.sub(lambda m: f'"{m[1]}":"{k:04x}', text)
        copy = _TIMES.sub(lambda m: f'"{m[1]}":"{int(m[2]) + k * shift}"', copy)
        copy = request_ids.sub(lambda m: f'"{m[1]}-c{k}"', copy)
        out.extend(line.encode() for line in copy.splitlines() if line.strip())
    return out


@pytest.mark.parametrize("sample", [SAMPLE, SGLANG], ids=["vllm", "sglang"])
def test_the_trimmed_model_is_the_model_of_what_the_window_kept(sample: Path):
    """The builder trims the model it built in place (no second build): it must be what a build
    of the kept traces gives, and not frozen (a live window's garbage must stay collectable)."""
    import gc

    window = LiveWindow(limit=3)
    for line in sample.read_bytes().splitlines():
        window.add_line(line)
    frozen = gc.get_freeze_count()
    model = window.build()
    assert gc.get_freeze_count() <= frozen
    assert window.stats.requests_dropped > 0 and len(model.requests) == 3
    fresh = LiveWindow(limit=100)
    fresh.traces = {trace_id: list(spans) for trace_id, spans in window.traces.items()}
    again = fresh.build()
    assert list(model.requests) == list(again.requests)
    for rid, request in model.requests.items():
        assert [s.span_id for s in request.spans] == [s.span_id for s in again.requests[rid].spans]
        assert [[s.span_id for s in step.spans] for step in request.steps] == \
            [[s.span_id for s in step.spans] for step in again.requests[rid].steps]
    assert [s.span_id for s in model.spans] == [s.span_id for s in again.spans]
    assert model.by_span_id.keys() == again.by_span_id.keys() and model.step_of_span.keys() == again.step_of_span.keys()
    assert [step.index for step in model.steps] == list(range(len(again.steps)))
    assert len(model.foreign_traces) == len(again.foreign_traces)


def test_release_gradually_empties_the_model():
    window = LiveWindow(limit=100)
    for line in SAMPLE.read_bytes().splitlines():
        window.add_line(line)
    model = window.build()
    assert model.requests and model.spans
    release_gradually(model)
    assert not (model.requests or model.spans or model.steps or model.by_span_id or model.step_of_span)
    assert window.build().requests  # the window itself keeps its spans


@pytest.mark.parametrize("sample", [SAMPLE, SGLANG], ids=["vllm", "sglang"])
def test_dropping_ahead_of_the_build_keeps_what_the_build_would(sample: Path):
    """Dropped before the build (traces of requests that start before the limit-th newest, and
    what joins them) or by it: the same rows, spans, steps and dropped count, build after build."""
    ahead, built = LiveWindow(limit=12), LiveWindow(limit=12)
    built._drop_ahead = lambda: False  # the reference: only the build drops
    dropped_ahead = []
    drop_ahead = ahead._drop_ahead
    ahead._drop_ahead = lambda: dropped_ahead.append(drop_ahead()) or dropped_ahead[-1]
    lines = copies(sample, 12)
    every = len(lines) // 8  # a build every copy and a half: each finds new roots past the limit
    for index, line in enumerate(lines):
        ahead.add_line(line)
        built.add_line(line)
        if index % every == every - 1 or index == len(lines) - 1:
            model, reference = ahead.build(), built.build()
            assert list(model.requests) == list(reference.requests)
            for rid, request in model.requests.items():
                assert [s.span_id for s in request.spans] == [s.span_id for s in reference.requests[rid].spans]
                assert [[s.span_id for s in step.spans] for step in request.steps] == \
                    [[s.span_id for s in step.spans] for step in reference.requests[rid].steps]
            assert [s.span_id for s in model.spans] == [s.span_id for s in reference.spans]
            assert ahead.stats.requests_dropped == built.stats.requests_dropped
    assert ahead.stats.requests_dropped > 0 and sum(dropped_ahead) >= 3  # most builds dropped ahead
    assert not any(name.startswith("trace:") for name in model.requests)
