"""Small text helpers shared by the explorer's widgets and the Rich summary."""
from __future__ import annotations

from typing import Any

BAR_CHARS = " ▏▎▍▌▋▊▉█"


def ms(ns: int | None) -> str:
    if ns is None:
        return "-"
    value = ns / 1e6
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 10:
        return f"{value:.0f} ms"
    return f"{value:.2f} ms"


def count(value: int | None) -> str:
    return "-" if value is None else str(value)


def bar(start_ns: int, end_ns: int, origin_ns: int, span_ns: int, width: int) -> str:
    """A one-line bar of `width` cells placing [start, end] on [origin, origin + span]."""
    if width <= 0:
        return ""
    span_ns = max(span_ns, 1)
    left = (start_ns - origin_ns) / span_ns * width
    right = (end_ns - origin_ns) / span_ns * width
    left = min(max(left, 0.0), width)
    right = min(max(right, left), width)
    cells = [" "] * width
    first, last = int(left), int(right)
    if first == last or right - left < 1 / 8:
        if first >= width:
            first = width - 1
        cells[first] = "▏" if right - left < 0.5 else BAR_CHARS[max(1, round((right - left) * 8))]
        return "".join(cells)
    for i in range(first, min(last, width)):
        cells[i] = "█"
    if last < width:
        partial = round((right - last) * 8)
        if partial:
            cells[last] = BAR_CHARS[partial]
    return "".join(cells)


def number(v: float) -> str:
    """A float as a reader wants it: four significant digits (0.0117647058 -> 0.01176), never
    an exponent for the sizes a trace holds; integers written as floats stay whole (0.0 -> 0)."""
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}" if 1e-4 <= abs(v) < 1e15 else f"{v:.3e}"


def fraction(v: float) -> str:
    """A fraction of a whole (KV pool usage) as a percentage: 0.0117647 -> 1.2%."""
    return f"{v:.1%}"


def value(v: Any, limit: int = 120) -> str:
    if isinstance(v, float):
        text = number(v)
    elif isinstance(v, (list, tuple)) and any(isinstance(x, float) for x in v):
        text = "[" + ", ".join(number(x) if isinstance(x, float) else str(x) for x in v) + "]"
    else:
        text = str(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"
