"""Serving latencies of a timed run: TTFT, TPOT, ITL distributions and throughput, per run.

Measured the engine's way, from when a request entered the scheduler to when the step that sampled
its token ended (the same definition on the trace's clock and on the predicted one, so the two
compare like for like; what a client sees adds the API server's own time on both ends).
"""
from __future__ import annotations

from dataclasses import dataclass

from tracer.replay.whatif.clock import TimedLog

METRICS = ("ttft_ms", "tpot_ms", "itl_ms")
STATS = ("mean", "p50", "p90", "p99")


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), without numpy."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0, **{s: float("nan") for s in STATS}}
    return {"count": len(values), "mean": sum(values) / len(values), "p50": percentile(values, 50),
            "p90": percentile(values, 90), "p99": percentile(values, 99)}


@dataclass
class Latencies:
    ttft_ms: list[float]
    tpot_ms: list[float]
    itl_ms: list[float]
    throughput_tok_s: float
    makespan_s: float

    def summary(self) -> dict:
        return {**{name: summarize(getattr(self, name)) for name in METRICS},
                "throughput_tok_s": self.throughput_tok_s, "makespan_s": self.makespan_s}


def latencies(log: TimedLog) -> Latencies:
    ttft, tpot, itl = [], [], []
    tokens, first, last = 0, None, None
    for rid, times in log.token_times_s.items():
        if not times:
            continue
        arrival = log.arrivals_s[rid]
        ttft.append(1e3 * (times[0] - arrival))
        gaps = [1e3 * (b - a) for a, b in zip(times, times[1:])]
        itl.extend(gaps)
        if gaps:
            tpot.append(sum(gaps) / len(gaps))
        tokens += len(times)
        first = arrival if first is None else min(first, arrival)
        last = times[-1] if last is None else max(last, times[-1])
    makespan = (last - first) if first is not None and last is not None else 0.0
    return Latencies(ttft, tpot, itl, tokens / makespan if makespan > 0 else 0.0, makespan)
