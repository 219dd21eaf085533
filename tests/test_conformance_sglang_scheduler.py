"""Our cache_mode "sglang" scheduler (engine/sglang_scheduler.py) against SGLang 0.5.23's real Scheduler
(tracer/replay/sglang_side: get_next_batch_to_run / process_batch_result over its RadixCache and
token pools, the forward pass a named stand-in), step by step on the same workload.

Each scenario is named after a mechanism of SGLang's scheduler and asserts, on SGLang's own log,
that the mechanism fired (and, the logs agreeing, on ours): a scenario that never exercised what it
is named after would pass for the wrong reason. One SGLang subprocess serves every scenario,
the session's shared one (SglangDriver.shared(): importing SGLang's scheduler takes ~15 s here).
"""
from __future__ import annotations

import dataclasses
import random

import pytest

from tracer.replay.compare import compare_logs
from tracer.replay.config import ReplayConfig
from tracer.replay.runners.base import ReplayLog, drive
from tracer.replay.runners.sglang_scheduler import MiniSglangRunner, SglangDriver, replay_sglang_scheduler, sglang_model, sglang_venv
from tracer.replay.workload import WorkloadRequest

pytestmark = pytest.mark.skipif(
    not (sglang_venv() / "bin" / "python").is_file() or not (sglang_model() / "config.json").is_file(),
    reason="needs .venv-sglang and the bundled model as an HF folder (make setup)",
)


@pytest.fixture(scope="module")
def driver() -> SglangDriver:
    # The process-wide driver (each job builds a fresh Scheduler and pools in it, so no state
    # carries from one job to the next): the modules that replay SGLang start it once between them.
    return SglangDriver.shared()


def req(rid: str, arrival: int, prompt: list[int], max_tokens: int) -> WorkloadRequest:
    return WorkloadRequest(rid, arrival, prompt, max_tokens)


def both(driver: SglangDriver, workload: list[WorkloadRequest], **config) -> tuple[ReplayLog, ReplayLog]:
    """Replay through ours and SGLang's; fail with the first divergence if they disagree."""
    replay_config = ReplayConfig(**{"max_model_len": 512, **config})
    ours = drive(MiniSglangRunner(replay_config), workload)
    theirs = replay_sglang_scheduler(workload, replay_config, driver)
    comparison = compare_logs(ours, theirs)
    assert not ours.stalled and not theirs.stalled, (ours.stalled, theirs.stalled)
    assert comparison.agree, f"diverged: {comparison.divergence}"
    assert comparison.agreeing_steps == len(theirs.steps) > 0
    return ours, theirs


def admissions(log: ReplayLog) -> dict[str, list[tuple[int, int, bool]]]:
    """{request: [(step index, cached tokens, resumed), ...]}"""
    out: dict[str, list[tuple[int, int, bool]]] = {}
    for index, step in enumerate(log.steps):
        for a in step.admitted:
            out.setdefault(a.request_id, []).append((index, a.cached_tokens, a.resumed))
    return out


SHARED = list(range(1, 41))  # a 40-token system prompt


def test_shared_prefix_hits_the_checkpointed_prompt(driver):
    workload = [req(f"r{i}", i // 2, SHARED + [100 + i] * (3 + i), 6) for i in range(6)]
    ours, theirs = both(driver, workload, block_size=1, num_blocks=257, max_num_batched_tokens=64)
    hits = {rid: [cached for _, cached, _ in a] for rid, a in admissions(theirs).items()}
    # Admitted a step after the first prefill, the others hit the 40 shared tokens that its
    # checkpoint (RadixCache.checkpoint after each prefill) put in the tree.
    assert all(h[0] >= 40 for rid, h in hits.items() if rid not in ("r0", "r1"))


def test_memory_pressure_retracts_and_resumes(driver):
    workload = [req(f"r{i}", 0, [50 + i] * 10, 40) for i in range(6)]
    ours, theirs = both(driver, workload, block_size=1, num_blocks=97, max_num_batched_tokens=64)
    retracted = [rid for step in theirs.steps for rid in step.preempted]
    assert retracted, "the pool never ran short: no retract_decode"
    resumed = [rid for rid, a in admissions(theirs).items() if any(r for _, _, r in a)]
    assert set(resumed) == set(retracted)


def test_chunked_long_prompt(driver):
    long_prompt = list(range(1000, 1100))
    workload = [req("long", 0, long_prompt, 4), req("short", 1, list(range(2000, 2020)), 4),
                req("sharer", 2, long_prompt[:50] + [7] * 5, 3)]
    ours, theirs = both(driver, workload, block_size=1, num_blocks=513, max_num_batched_tokens=32)
    chunks = [n for step in theirs.steps for rid, n in step.scheduled if rid == "long" and n > 1]
    assert len(chunks) >= 3 and sum(chunks) == 100 and max(chunks) == 32  # cut into chunked_prefill_size pieces
    # The chunk already prefilled was checkpointed (stash_chunked_request): the sharer hits it.
    assert admissions(theirs)["sharer"][0][1] >= 50


def test_burst_caps_the_running_batch(driver):
    workload = [req(f"b{i}", 0, [300 + i] * 12, 5) for i in range(12)]
    ours, theirs = both(driver, workload, block_size=1, num_blocks=513, max_num_seqs=4, max_num_batched_tokens=256)
    assert max(len(step.running) for step in theirs.steps) == 4  # max_running_requests
    assert len(theirs.steps[0].admitted) == 4 and len(theirs.steps[0].waiting or []) == 8


def test_in_batch_prefix_caching_holds_back_a_sharer(driver):
    # a and c share 40 uncached tokens; b is unrelated. SGLang admits a and b first and holds c
    # back (SchedulePolicy._compute_prefix_matches), so c then hits the prefix a published.
    workload = [req("a", 0, SHARED + [1] * 8, 3), req("c", 0, SHARED + [2] * 8, 3), req("b", 0, [900] * 48, 3)]
    ours, theirs = both(driver, workload, block_size=1, num_blocks=513, max_num_batched_tokens=96)
    first = [a.request_id for a in theirs.steps[0].admitted]
    assert first == ["a", "b"]
    assert admissions(theirs)["c"][0][1] == 40


def test_lru_eviction_keeps_the_recent_prefix(driver):
    prompts = [[400 + 10 * i + j for j in range(20)] for i in range(4)]
    workload = [req(f"p{i}", 6 * i, prompts[i], 2) for i in range(4)]
    workload += [req("again0", 30, prompts[0] + [1], 2), req("again3", 36, prompts[3] + [1], 2)]
    ours, theirs = both(driver, workload, block_size=1, num_blocks=65, max_num_batched_tokens=64)
    seen = admissions(theirs)
    assert seen["again0"][0][1] == 0  # the oldest prompt was evicted to make room
    assert seen["again3"][0][1] == 20  # the most recent one was kept


def test_paged_prefix_hits_are_whole_pages(driver):
    workload = [req(f"q{i}", i, SHARED[:30] + [600 + i] * 9, 4) for i in range(5)]
    ours, theirs = both(driver, workload, block_size=4, num_blocks=129, max_num_batched_tokens=32)
    hits = [a.cached_tokens for step in theirs.steps for a in step.admitted if a.cached_tokens]
    assert hits and all(h % 4 == 0 for h in hits) and max(hits) == 28  # 30 shared tokens: 7 whole pages


def test_without_chunking_the_input_budget_stops_the_second_prompt(driver):
    workload = [req("x", 0, [700] * 150, 3), req("y", 0, [701] * 150, 3)]
    ours, theirs = both(driver, workload, block_size=1, num_blocks=1025, max_num_batched_tokens=256,
                        max_model_len=256, enable_chunked_prefill=False)
    assert [a.request_id for a in theirs.steps[0].admitted] == ["x"]
    assert [rid for rid, n in theirs.steps[0].scheduled] == ["x"] and theirs.steps[0].scheduled[0][1] == 150


def test_mixed_workload_under_pressure(driver):
    rng = random.Random(15)
    prefixes = [list(range(5000 + 100 * k, 5000 + 100 * k + 24)) for k in range(3)]
    workload = []
    for i in range(30):
        prompt = rng.choice(prefixes)[: rng.randint(8, 24)] + [rng.randrange(10, 9000) for _ in range(rng.randint(1, 30))]
        workload.append(req(f"m{i}", rng.randint(0, 20), prompt, rng.randint(10, 30)))
    ours, theirs = both(driver, workload, block_size=1, num_blocks=129, max_num_seqs=8, max_num_batched_tokens=48)
    assert any(step.preempted for step in theirs.steps), "no retraction"
    assert any(a.cached_tokens for step in theirs.steps for a in step.admitted), "no prefix hit"
    assert any(n > 1 and n < 48 for step in theirs.steps for _, n in step.scheduled)


def test_priority_scheduling_admits_a_later_higher_priority_request_first(driver):
    # Policy priority: SGLang's fcfs with --enable-priority-scheduling, low values first
    # (SchedulePolicy._sort_by_priority_and_fcfs, sglang/srt/managers/schedule_policy.py:526-535).
    # One running slot: a, b, c wait behind `first` and are admitted by priority, not arrival.
    workload = [WorkloadRequest("first", 0, [11] * 10, 8, priority=2), WorkloadRequest("a", 1, [12] * 10, 3, priority=2),
                WorkloadRequest("b", 2, [13] * 10, 3, priority=1), WorkloadRequest("c", 3, [14] * 10, 3, priority=0)]
    ours, theirs = both(driver, workload, block_size=1, num_blocks=257, max_num_seqs=1, max_num_batched_tokens=64,
                        policy="priority")
    order = [a.request_id for step in theirs.steps for a in step.admitted]
    assert order == ["first", "c", "b", "a"]  # c arrived last, with the smallest value
    # Priorities 2 apart stay under the preemption threshold (10): `first` ran to its end.
    assert not any(step.preempted for step in theirs.steps)


def test_priority_preemption_makes_room_for_an_urgent_request(driver):
    # The batch is full (max_num_seqs 2) when `urgent` arrives, 20 values ahead of both running
    # requests: PrefillAdder.preempt_to_schedule (schedule_policy.py:1707-1778) preempts the one
    # that entered the queue last, and it goes back to the waiting queue (scheduler.py:4320-4322).
    workload = [WorkloadRequest("low0", 0, [21] * 10, 30, priority=20), WorkloadRequest("low1", 0, [22] * 10, 30, priority=20),
                WorkloadRequest("urgent", 3, [23] * 10, 5, priority=0)]
    ours, theirs = both(driver, workload, block_size=1, num_blocks=257, max_num_seqs=2, max_num_batched_tokens=64,
                        policy="priority")
    [step] = [s for s in theirs.steps if s.preempted]
    assert step.step == 3 and step.preempted == ["low1"] and [a.request_id for a in step.admitted] == ["urgent"]
    assert admissions(theirs)["low1"][-1][2]  # resumed once urgent finished
    assert max(len(s.running) for s in theirs.steps) == 2  # never over max_running_requests


def test_priority_preemption_threshold_is_the_replay_configs(driver):
    # ReplayConfig.priority_scheduling_preemption_threshold reaches both sides (SGLang's
    # --priority-scheduling-preemption-threshold): `urgent` is 5 values ahead, and a running request
    # is preempted only when the difference is over the threshold (schedule_policy.py:1745-1747).
    workload = [WorkloadRequest("low0", 0, [21] * 10, 30, priority=5), WorkloadRequest("low1", 0, [22] * 10, 30, priority=5),
                WorkloadRequest("urgent", 3, [23] * 10, 5, priority=0)]
    for threshold, preempts in ((10, False), (5, False), (4, True)):
        ours, theirs = both(driver, workload, block_size=1, num_blocks=257, max_num_seqs=2, max_num_batched_tokens=64,
                            policy="priority", priority_scheduling_preemption_threshold=threshold)
        assert [s.preempted for s in theirs.steps if s.preempted] == ([["low1"]] if preempts else []), threshold


def random_case(seed: int) -> tuple[dict, list[WorkloadRequest]]:
    """A configuration and workload drawn from the space the scheduler runs in: page sizes 1-16,
    pools from tight to roomy, chunked or not, caching on or off, shared prefixes, staggered arrivals."""
    rng = random.Random(seed)
    block_size = rng.choice([1, 1, 2, 4, 8, 16])
    num_blocks = rng.randint(12, 60) if block_size > 2 else rng.randint(40, 260)
    chunked = rng.random() < 0.8
    config = dict(block_size=block_size, num_blocks=num_blocks, max_num_seqs=rng.choice([1, 2, 4, 8]),
                  max_num_batched_tokens=rng.choice([16, 32, 64, 128]) if chunked else 256, max_model_len=256,
                  enable_chunked_prefill=chunked, enable_prefix_caching=rng.random() < 0.85)
    prefixes = [[rng.randrange(10, 5000) for _ in range(rng.randint(4, 48))] for _ in range(3)]
    workload = []
    for i in range(rng.randint(2, 24)):
        shared = rng.choice(prefixes)[: rng.randint(1, 48)] if rng.random() < 0.7 else []
        prompt = shared + [rng.randrange(10, 9000) for _ in range(rng.randint(1, 40))]
        max_tokens = rng.randint(1, 40) if rng.random() < 0.5 else rng.randint(30, 120)
        if -(-(len(prompt) + max_tokens) // block_size) <= num_blocks - 1:  # what validate_workload allows
            workload.append(req(f"q{i}", rng.randint(0, 15), prompt, max_tokens))
    return config, workload


def test_random_configurations_agree(driver):
    retracting = hitting = 0
    for seed in range(1000, 1060):
        config, workload = random_case(seed)
        if not workload:
            continue
        replay_config = ReplayConfig(**config)
        ours = drive(MiniSglangRunner(replay_config), workload)
        theirs = replay_sglang_scheduler(workload, replay_config, driver)
        comparison = compare_logs(ours, theirs)
        # Both may stall the same way (a pool whose page overhead no request fits): that agrees too.
        assert comparison.agree and bool(ours.stalled) == bool(theirs.stalled), (seed, comparison.divergence)
        retracting += any(step.preempted for step in theirs.steps)
        hitting += any(a.cached_tokens for step in theirs.steps for a in step.admitted)
    assert retracting >= 3 and hitting >= 20, (retracting, hitting)  # the search reached both mechanisms


def preempted_in_another_order(comparison) -> bool:
    """The one divergence named in engine/sglang_scheduler.py's differences: SGLang requeues the
    requests one priority preemption took in a set's order (by object address); ours in victim order."""
    d = comparison.divergence
    return (d is not None and set(d.fields) <= {"preempted", "waiting"} and len(d.left["preempted"]) > 1
            and sorted(d.left["preempted"]) == sorted(d.right["preempted"]))


def test_random_priority_configurations_agree(driver):
    # random_case's space with policy priority and priorities far enough apart (0..30, threshold 10)
    # for PrefillAdder.preempt_to_schedule to fire.
    priority_preempting = set_order = 0
    for seed in range(1000, 1040):
        config, workload = random_case(seed)
        if not workload:
            continue
        rng = random.Random(seed * 7)
        workload = [dataclasses.replace(r, priority=rng.choice([0, 5, 15, 30])) for r in workload]
        replay_config = ReplayConfig(**config, policy="priority")
        ours = drive(MiniSglangRunner(replay_config), workload)
        theirs = replay_sglang_scheduler(workload, replay_config, driver)
        comparison = compare_logs(ours, theirs)
        if preempted_in_another_order(comparison):
            set_order += 1
            continue
        assert comparison.agree and bool(ours.stalled) == bool(theirs.stalled), (seed, comparison.divergence)
        # Retraction runs on decode steps only: a preemption in a step that admitted is priority's.
        priority_preempting += any(step.preempted and step.admitted for step in theirs.steps)
    assert priority_preempting >= 5 and set_order <= 2, (priority_preempting, set_order)


def test_replay_session_writes_the_sglang_scheduler_comparison(driver, tmp_path):
    import json

    from tracer.replay.session import run_replay

    workload = [req(f"r{i}", 0, [50 + i] * 10, 40) for i in range(6)]
    config = ReplayConfig(block_size=1, num_blocks=97, max_num_batched_tokens=64)
    result = run_replay(workload, config, ["mini-sglang", "sglang"], tmp_path / "out", trace=True)
    compare = json.loads((tmp_path / "out" / "compare.json").read_text())
    [scheduler] = compare["scheduler"]
    assert (scheduler["left_engine"], scheduler["right_engine"], scheduler["agree"]) == ("mini-sglang", "sglang", True)
    assert scheduler["agreeing_steps"] == scheduler["right_steps"] > 0
    assert any("overlap" in item for item in scheduler["known_differences"])  # engine/sglang_scheduler.py's list
    assert result.agree and (tmp_path / "out" / "steps-sglang-scheduler.json").is_file()
    # Each side traced by the same hooks as live engines: ours in process, SGLang's inside its subprocess.
    for name in ("trace-mini-sglang.jsonl", "trace-sglang-scheduler.jsonl"):
        assert '"scheduler.schedule"' in (tmp_path / "out" / name).read_text(), name
