"""whatif on a closed-loop workload: a client sends its next request when its previous one finished.

The trace is our server's (build_app + uvicorn, traced as `servetrace serve --trace` does) under the
live tests' own traffic (tests/live_workload.py: one client, each request sent once the one before
it has answered, an aborted stream, then four generations at once that outgrow the small KV pool).
whatif must find which requests waited on which, and on the predicted clock release each one that
long after its predecessor's *predicted* finish: then a step-time model that is 50% off (what a
loaded machine's trace gives) still leaves every decision the server's; with those requests pinned
to their traced wall time (the planted bug) they join batches the server never ran.
"""
from __future__ import annotations

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from tests.live_workload import LiveRun, run_workload
from tests.test_server import RunningServer
from tracer.instrument import otel, tracing
from tracer.replay.config import ReplayConfig
from tracer.replay.traced_run import TracedRequest, TracedRun, TracedStep, read_traced_run
from tracer.replay.whatif.closed_loop import chance, infer_closed_loop
from tracer.replay.whatif.session import fit_on_trace, run_whatif
from tracer.replay.whatif.step_time import StepTimeModel

SEQUENTIAL = ["completion", "completion-stream", "chat", "chat-stream", "prefix-first", "prefix-second", "aborted"]


@pytest.fixture(scope="module")
def served_trace(tmp_path_factory) -> tuple[LiveRun, object]:
    folder = tmp_path_factory.mktemp("whatif-closed-loop")
    live = LiveRun(trace_path=folder / "trace.jsonl", log_path=folder / "unused.log")
    # 16 usable blocks of 16 (256 tokens): the shared-prefix prompt (209 tokens) fits, the four
    # 56-token generations at once (about 74 tokens each) outgrow them.
    engine = LLMEngine(EngineConfig(
        cache=CacheConfig(block_size=16, num_blocks=17, enable_prefix_caching=True),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256),
    ))
    tracing.enable("mini", trace_file=live.trace_path)
    try:
        server = RunningServer(engine).start()
        try:
            run_workload(server.base_url.removesuffix("/v1"), live, pressure_requests=4, pressure_tokens=56)
        finally:
            server.stop()
        otel.flush()
    finally:
        tracing.disable()
    return live, read_traced_run(live.trace_path)


def test_each_request_the_client_sent_after_a_response_depends_on_that_response(served_trace):
    """The client is closed loop by construction, so the rule runs with a gap no loaded machine's
    client turnaround reaches (the default is tighter: it must also tell open-loop traffic apart)."""
    live, run = served_trace
    sent = [r.id for r in sorted(run.requests, key=lambda r: r.client_start_ns)]  # the client's order
    sequential, pressure = sent[:len(SEQUENTIAL)], sent[len(SEQUENTIAL):]
    assert len(pressure) == 4
    dependencies = infer_closed_loop(run, gap_s=0.5)
    expected = {rid: sequential[i - 1] for i, rid in enumerate(sequential) if i} | {rid: sequential[-1] for rid in pressure}
    assert {rid: d.after for rid, d in dependencies.items()} == expected  # the first one came open loop
    assert all(0 <= d.client_gap_s <= 0.5 for d in dependencies.values())
    assert infer_closed_loop(run, gap_s=0) == {}


def _request(rid: str, start_ms: float, end_ms: float) -> TracedRequest:
    """Its HTTP request from start_ms to end_ms; it enters the scheduler 2 ms after it began."""
    ns = lambda ms: int(ms * 1e6)  # noqa: E731
    return TracedRequest(rid, rid, ns(start_ms + 2), 0, 16, 1, "length", "none", ns(start_ms), ns(end_ms))


def test_the_rule_is_the_gap_from_the_last_response_to_the_next_request():
    """P's response ends at 100 ms, Q's at 104: R begins 13 ms after Q's end (within the default
    50 ms: Q's next turn, not P's); S 61 ms after R's end (open loop, linked only with a wider gap);
    a request without a client side (an offline engine's) is never a dependent."""
    requests = [_request("P", 0, 100), _request("Q", 10, 104), _request("R", 117, 150), _request("S", 211, 240)]
    offline = TracedRequest("T", "T", int(101e6), 0, 16, 1, "length", "none")
    # The step that finishes each ends 1 ms before its response does.
    steps = [TracedStep(i, int((end_ms - 2) * 1e6), int((end_ms - 1) * 1e6), {}, [], [rid])
             for i, (rid, end_ms) in enumerate([("P", 100), ("Q", 104), ("R", 150), ("S", 240), ("T", 250)])]
    run = TracedRun("synthetic", "mini", None, ReplayConfig(), [*requests, offline], [], steps)
    dependencies = infer_closed_loop(run)
    assert {rid: d.after for rid, d in dependencies.items()} == {"R": "Q"}
    assert dependencies["R"].client_gap_s == pytest.approx(0.013)
    assert dependencies["R"].lag_s == pytest.approx(0.119 - 0.103)  # from Q's finishing step's end to R entering
    assert {rid for rid in infer_closed_loop(run, gap_s=0.070)} == {"R", "S"}
    # At this rate the 50 ms windows after the responses cover 100 of the 211 ms in which requests
    # began: about 1.9 of the 4 would be linked by chance alone, and the estimate says so.
    assert chance(run) == pytest.approx(4 * 100 / 211)


def test_a_model_fifty_percent_slow_keeps_every_decision_when_closed_loop_requests_follow_their_predecessor(served_trace):
    live, run = served_trace
    fitted = fit_on_trace(run)[0]
    slow = StepTimeModel([1.5 * c for c in fitted.coefficients], fitted.gap_s, fitted.wake_s)
    result = run_whatif(live.trace_path, {}, ["mini", "vllm"], model=slow, closed_loop_gap_s=0.5)
    assert result.measured_decisions.agree, result.measured_decisions.to_json()
    assert any(step.preempted for step in run.steps), "the four generations at once must outgrow the pool"
    sent = sorted(run.requests, key=lambda r: r.client_start_ns)
    burst = sent[len(SEQUENTIAL):]
    burst_step = min(r.arrival_step for r in burst)
    for prediction in result.predictions:
        decisions = prediction.decisions
        if len({r.arrival_step for r in burst}) == 1:
            assert decisions.agree, decisions.to_json()
        else:
            # The four threads reached the server across a step boundary: each is released its own
            # lag after the aborted stream's predicted finish, and a slow model's longer step can
            # take in one the server's next step took. Every step before them stays the server's.
            assert decisions.agreeing_steps >= burst_step, decisions.to_json()
    # The planted bug: every arrival on its traced wall time. A slow model's finishes come late, so
    # the client's next request reaches a batch its predecessor is still in, long before the burst.
    pinned = run_whatif(live.trace_path, {}, ["mini"], model=slow, closed_loop_gap_s=0)
    (prediction,) = pinned.predictions
    assert prediction.decisions.agreeing_steps < burst_step, prediction.decisions.to_json()
