"""Which of a trace's requests were sent by a client waiting on another's response (closed loop).

A closed-loop client (a chat user, a benchmark with N workers, an agent) sends its next request when
its previous one finished; on a predicted clock that request must come that long after its
predecessor's *predicted* finish, not at the wall time it came in the trace: a step-time model off
by 30% moves the finish, and a request pinned to its traced wall time then joins a batch the server
never ran (or misses one it did). Open-loop arrivals (a request sent at a fixed time) stay on the
wall clock.

The rule, read off the client's side of each request (its entrypoint span, http.request: when the
API server began it and when its response ended):

    R depends on P when P's response is the last to end before R began, and R began at most
    `gap_s` (DEFAULT_GAP_S) after it ended.

Several requests may depend on one (a client that fans out once a response is in). On the predicted
clock R is released `lag` after P's predicted finish, where lag is what the trace measured between
the end of the engine step that finished P and R entering the scheduler (the response's way out
through the API server and the next request's way in).

Why the client's side: engine-side times are quantised by steps. A request that reaches a busy
engine waits in its input queue and enters the scheduler right after the step in flight ends, the
step that may finish another request: of the 200 requests of the open-loop validation traces
(bench/whatif_validation.py), 24 entered the scheduler within 0.5 ms of the end of a step that
finished another; client-side, 23 of them had begun 80 ms to 4.9 s after the last response (the
other, 13 ms: the workload's first request, sent as the warm-up request returned). A trace without
an entrypoint span (an offline engine's) keeps every arrival on the wall clock.
"""
from __future__ import annotations

from dataclasses import dataclass

from tracer.replay.traced_run import TracedRun

# At most this long from a response's end to the next request's start for the two to be one client's
# turn. The live tests' closed-loop client (tests/live_workload.py) took 0.4-11 ms on this machine
# (four threads started together reach 11), once 33 (its first chat call, on our server). Of the 192
# open-loop requests of the validation traces (Poisson, 350 ms mean gap), 2 began within 15 ms of
# another's response by chance, 3 within 25, 4 within 50; `chance()` estimates it for any trace.
DEFAULT_GAP_S = 0.050


@dataclass(frozen=True)
class Dependency:
    after: str  # the predecessor's engine id
    lag_s: float  # from the end of the step that finished the predecessor to this one entering the scheduler
    client_gap_s: float  # from the predecessor's response end to this request's start (the evidence)

    def to_json(self) -> dict:
        return {"after": self.after, "lag_s": self.lag_s, "client_gap_s": self.client_gap_s}


def finish_times_ns(run: TracedRun) -> dict[str, int]:
    """Engine id -> the end of the decision step that finished it in the trace."""
    out: dict[str, int] = {}
    for step in run.steps:
        for rid in step.finished:
            out.setdefault(rid, step.end_ns)
    return out


def infer_closed_loop(run: TracedRun, gap_s: float = DEFAULT_GAP_S) -> dict[str, Dependency]:
    """Request id -> the request whose response it waited for; gap_s <= 0 finds none."""
    if gap_s <= 0:
        return {}
    finished = finish_times_ns(run)
    ended = sorted((r.client_end_ns, r.id) for r in run.requests
                   if r.client_end_ns is not None and r.id in finished)
    out: dict[str, Dependency] = {}
    for request in run.requests:
        if request.client_start_ns is None:
            continue
        before = [(end, rid) for end, rid in ended if end <= request.client_start_ns and rid != request.id]
        if not before:
            continue
        end, after = before[-1]
        client_gap = (request.client_start_ns - end) / 1e9
        if client_gap <= gap_s:
            out[request.id] = Dependency(after, (request.arrival_ns - finished[after]) / 1e9, client_gap)
    return out


def chance(run: TracedRun, gap_s: float = DEFAULT_GAP_S) -> float:
    """How many of the run's requests would begin within gap_s of a response's end by chance if
    they all came open loop, at the trace's own rate: the share of the time requests began over
    that the windows [end, end + gap_s] cover, times the requests that have a client side. The
    rule is as good as this is small (at 20 responses a second a 50 ms window covers all the time)."""
    starts = sorted(r.client_start_ns for r in run.requests if r.client_start_ns is not None)
    ends = sorted(r.client_end_ns for r in run.requests if r.client_end_ns is not None)
    if len(starts) < 2 or gap_s <= 0:
        return 0.0
    window, covered, reach = int(gap_s * 1e9), 0, starts[0]
    for end in ends:
        low, high = max(end, reach), min(end + window, starts[-1])
        if high > low:
            covered += high - low
        reach = max(reach, end + window)
    return len(starts) * covered / (starts[-1] - starts[0])


def describe(dependencies: dict[str, Dependency], num_requests: int, gap_s: float, by_chance: float) -> str:
    if gap_s <= 0:
        return f"arrivals: all {num_requests} on the wall clock (closed-loop inference off)"
    chained = len(dependencies)
    return (f"arrivals: {chained} of {num_requests} closed-loop (sent within {1e3 * gap_s:g} ms of another's response; "
            f"about {by_chance:.1f} would be by chance at this trace's rate): released after its predecessor's "
            f"predicted finish; {num_requests - chained} on the wall clock (--closed-loop-gap-ms sets the rule, 0 turns it off)")
