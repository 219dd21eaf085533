"""Checks the engine tests share: the KV pool left as it started, the steps a batch queue holds, and
a spy on the scheduler's preemptions."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from engine.llm_engine import LLMEngine


def assert_pool_empty(engine: LLMEngine) -> None:
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.kv_cache_manager.get_num_free_blocks() == engine.config.cache.num_blocks - 1  # all but the null block


def in_flight(engine: LLMEngine) -> list:
    """SchedulerOutputs of the steps scheduled whose output has not been applied yet (async scheduling)."""
    return [scheduler_output for _, scheduler_output in engine.batch_queue.queue]


def abort_in_flight_and_finish(engine: LLMEngine, request_id: str, in_flight_now) -> dict:
    """Steps until in_flight_now(the newest step in flight) holds, aborts request_id there, and runs
    the rest to the end; returns the finished outputs by request id, after checking the aborted
    request's in-flight output was never delivered."""
    while not in_flight(engine) or not in_flight_now(in_flight(engine)[-1]):
        engine.step()
    engine.abort_request(request_id)
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id != request_id, "the aborted request's in-flight output was delivered"
            if out.finished:
                finished[out.request_id] = out
    return finished


@contextmanager
def preemptions(engine: LLMEngine) -> Iterator[list[int]]:
    """While the body runs, every request the scheduler preempts appends its num_in_flight_tokens as
    the preemption began (a step of its own still in flight: > 0). The engine's own
    Scheduler._preempt_request is back afterwards."""
    preempted_in_flight: list[int] = []
    original = engine.scheduler._preempt_request

    def spy(request, timestamp):
        preempted_in_flight.append(request.num_in_flight_tokens)
        original(request, timestamp)

    engine.scheduler._preempt_request = spy
    try:
        yield preempted_in_flight
    finally:
        del engine.scheduler._preempt_request
