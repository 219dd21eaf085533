"""A trace file (OTLP/JSON lines, tracer.traces.trace_file) drawn as an inline SVG timeline.

Lanes: the engine steps first (step-scope spans, one sub-lane per nesting depth), then one lane
per request (its spans packed into sub-lanes so overlapping spans never hide each other). Each
bar's <title> carries the span's name, request, duration and attributes, so hovering explains it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from tracer.catalog.hops import Catalog, load_catalog
from tracer.traces.trace_file import SpanRecord, TraceFile

# One colour per hop, given in catalog order (tracer/catalog/hops.yaml): the palette is
# presentation, the hops are the catalog's. A hop past the palette's end reuses it from the start.
PALETTE = (
    "#546e7a", "#8d6e63", "#78909c", "#b0bec5", "#1e88e5", "#43a047", "#fb8c00", "#7cb342",
    "#c0ca33", "#e53935", "#8e24aa", "#5e35b1", "#00897b", "#3949ab", "#6d4c41", "#00acc1",
)


def hop_colours(catalog: Catalog | None = None) -> dict[str, str]:
    """{hop: colour} for every catalog hop, in catalog order."""
    hops = (catalog or load_catalog()).hops
    return {hop.name: PALETTE[index % len(PALETTE)] for index, hop in enumerate(hops)}


OTHER_COLOUR = "#9e9e9e"
# The SVG scales to the content column (about 870 px wide in MkDocs Material at a 1400 px
# window), so a viewBox about that wide keeps one unit close to one pixel: a bar of 20 units and
# labels of 13 units stay readable instead of shrinking to the 9 px bars and 8 px labels the
# first version drew (1000 units wide, 11-unit lanes: timelines ~60 px tall).
LABEL_WIDTH = 150
PLOT_WIDTH = 750
SUBLANE_HEIGHT = 20
LANE_GAP = 8
AXIS_HEIGHT = 30
MIN_HEIGHT = 150  # a trace of three lanes still draws >= 120 px tall in the content column (~0.84 px a unit)
LABEL_CHARS = 20  # lane labels are cut to this many characters (13-unit text, ~7 units a character)
MAX_ATTRIBUTES_SHOWN = 12


@dataclass
class Lane:
    label: str
    rows: list[list[SpanRecord]]


@dataclass
class Timeline:
    svg: str
    lanes: int
    spans_drawn: int
    spans_total: int
    requests_total: int
    requests_drawn: int
    duration_ms: float
    hop_summary: list[tuple[str, int, float, float]]  # hop, count, total ms, mean ms


def _request_of_trace(trace: TraceFile) -> dict[str, str]:
    owner: dict[str, str] = {}
    for span in trace.spans:
        if span.request_id is not None:
            owner.setdefault(span.trace_id, span.request_id)
    return owner


def _depths(spans: list[SpanRecord]) -> dict[str, int]:
    by_id = {s.span_id: s for s in spans}
    depths: dict[str, int] = {}

    def depth(span: SpanRecord) -> int:
        if span.span_id in depths:
            return depths[span.span_id]
        parent = by_id.get(span.parent_span_id or "")
        value = 0 if parent is None else depth(parent) + 1
        depths[span.span_id] = value
        return value

    for span in spans:
        depth(span)
    return depths


def _pack(spans: list[SpanRecord]) -> list[list[SpanRecord]]:
    """Greedy interval packing: each span goes to the first row whose last span ended before it."""
    rows: list[list[SpanRecord]] = []
    ends: list[int] = []
    for span in sorted(spans, key=lambda s: (s.start_ns, -s.end_ns)):
        for index, end in enumerate(ends):
            if span.start_ns >= end:
                rows[index].append(span)
                ends[index] = span.end_ns
                break
        else:
            rows.append([span])
            ends.append(span.end_ns)
    return rows


def build_lanes(trace: TraceFile, max_requests: int) -> tuple[list[Lane], int]:
    owner = _request_of_trace(trace)
    step_spans = [s for s in trace.spans if s.trace_id not in owner]
    lanes: list[Lane] = []
    if step_spans:
        depths = _depths(step_spans)
        rows: dict[int, list[SpanRecord]] = {}
        for span in step_spans:
            rows.setdefault(depths[span.span_id], []).append(span)
        lanes.append(Lane("engine steps", [rows[d] for d in sorted(rows)]))
    by_request: dict[str, list[SpanRecord]] = {}
    for span in trace.spans:
        if span.trace_id in owner:
            by_request.setdefault(owner[span.trace_id], []).append(span)
    for request_id in list(by_request)[:max_requests]:
        lanes.append(Lane(request_id, _pack(by_request[request_id])))
    return lanes, len(by_request)


def _tooltip(span: SpanRecord, origin: int, lane: str) -> str:
    lines = [f"{span.name} [{lane}]", f"start {(span.start_ns - origin) / 1e6:.3f} ms, duration {span.duration_ns / 1e6:.3f} ms"]
    for key, value in list(span.attributes.items())[:MAX_ATTRIBUTES_SHOWN]:
        text = str(value)
        lines.append(f"{key} = {text[:80] + '…' if len(text) > 80 else text}")
    return escape("\n".join(lines))


def _ticks(duration_ms: float) -> list[float]:
    """Round tick positions (1, 2 or 5 times a power of ten), about eight across the axis."""
    raw = duration_ms / 8
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [round(i * step, 9) for i in range(int(duration_ms / step) + 1)]


def render_timeline(trace: TraceFile, max_requests: int = 12) -> Timeline:
    if not trace.spans:
        raise ValueError(f"{trace.path or 'the trace'} holds no spans")
    lanes, requests_total = build_lanes(trace, max_requests)
    origin = min(s.start_ns for s in trace.spans)
    end = max(s.end_ns for s in trace.spans)
    duration_ms = max((end - origin) / 1e6, 1e-6)
    scale = PLOT_WIDTH / duration_ms

    colours = hop_colours()
    parts: list[str] = []
    y = AXIS_HEIGHT
    drawn = 0
    for lane_index, lane in enumerate(lanes):
        height = len(lane.rows) * SUBLANE_HEIGHT
        shade = "#f5f7fa" if lane_index % 2 == 0 else "#ffffff"
        parts.append(f'<rect x="0" y="{y - 2}" width="{LABEL_WIDTH + PLOT_WIDTH}" height="{height + 4}" fill="{shade}"/>')
        label = lane.label if len(lane.label) <= LABEL_CHARS else lane.label[: LABEL_CHARS - 1] + "…"
        parts.append(f'<text class="st-lane-label" x="6" y="{y + SUBLANE_HEIGHT - 6}">{escape(label)}<title>{escape(lane.label)}</title></text>')
        for row_index, row in enumerate(lane.rows):
            row_y = y + row_index * SUBLANE_HEIGHT
            for span in row:
                x = LABEL_WIDTH + (span.start_ns - origin) / 1e6 * scale
                width = max(span.duration_ns / 1e6 * scale, 1.0)
                colour = colours.get(span.name, OTHER_COLOUR)
                parts.append(
                    f'<rect class="st-span" data-hop="{escape(span.name)}" x="{x:.2f}" y="{row_y}" width="{width:.2f}" '
                    f'height="{SUBLANE_HEIGHT - 2}" fill="{colour}"><title>{_tooltip(span, origin, lane.label)}</title></rect>'
                )
                drawn += 1
        y += height + LANE_GAP
    axis = [f'<line x1="{LABEL_WIDTH}" y1="{AXIS_HEIGHT - 4}" x2="{LABEL_WIDTH + PLOT_WIDTH}" y2="{AXIS_HEIGHT - 4}" stroke="#90a4ae"/>']
    for tick in _ticks(duration_ms):
        x = LABEL_WIDTH + tick * scale
        axis.append(f'<line x1="{x:.2f}" y1="{AXIS_HEIGHT - 8}" x2="{x:.2f}" y2="{y}" stroke="#eceff1"/>')
        axis.append(f'<text class="st-tick" x="{x:.2f}" y="{AXIS_HEIGHT - 12}">{tick:g} ms</text>')
    total_height = max(y + 4, MIN_HEIGHT)
    svg = (
        f'<svg class="st-timeline-svg" viewBox="0 0 {LABEL_WIDTH + PLOT_WIDTH} {total_height}" data-lanes="{len(lanes)}" '
        f'width="100%" role="img" aria-label="trace timeline" xmlns="http://www.w3.org/2000/svg">'
        + "".join(axis[:1]) + "".join(parts) + "".join(axis[1:]) + "</svg>"
    )
    summary: dict[str, list[int]] = {}
    for span in trace.spans:
        summary.setdefault(span.name, []).append(span.duration_ns)
    hop_summary = sorted(
        ((name, len(d), sum(d) / 1e6, sum(d) / len(d) / 1e6) for name, d in summary.items()), key=lambda r: -r[2]
    )
    return Timeline(svg, len(lanes), drawn, len(trace.spans), requests_total, min(requests_total, max_requests), duration_ms, hop_summary)
