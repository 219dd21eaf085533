"""`servetrace replay --from-trace` and `servetrace whatif` on a trace of our engine.

The trace is made here: the bundled model served offline by our LLMEngine, traced by the catalog's
hooks, with requests in bursts that reach an idle engine (a shared system prompt, a prompt longer
than the token budget, more decode than the small KV pool holds: a preemption). Replaying it must
give back the server's own decisions on every step, through our scheduler and vLLM 0.33's; whatif
under the trace's own config must give them back too, on the predicted clock, and its latencies
within the step-time model's own error.
"""
from __future__ import annotations

import time

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from tracer.instrument import tracing
from tracer.replay.from_trace import replay_from_trace
from tracer.replay.traced_run import read_traced_run, synthetic_prompt
from tracer.replay.whatif.session import WhatifError, parse_sets, run_whatif

SYSTEM = list(range(1000, 1040))  # 40 tokens: two full 16-token blocks and 8 more
# Bursts of (id, prompt, max_tokens); each reaches an idle engine after the one before has finished.
BURSTS = [
    [("a", SYSTEM + [5, 6, 7], 4), ("b", SYSTEM + [8, 9], 4)],  # b shares a's two full blocks
    [("long", list(range(2000, 2090)), 3)],  # 90 tokens over a 48-token budget: chunked prefill
    [("p0", list(range(3000, 3020)), 24), ("p1", list(range(3100, 3120)), 24), ("p2", SYSTEM + [1], 24)],
]


@pytest.fixture(scope="module")
def engine_trace(tmp_path_factory):
    engine = LLMEngine(EngineConfig(
        # 8 usable blocks of 16: the last burst outgrows them and one request is preempted.
        cache=CacheConfig(block_size=16, num_blocks=9, enable_prefix_caching=True),
        scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=48, max_model_len=128),
    ))
    path = tmp_path_factory.mktemp("whatif") / "trace.jsonl"
    with tracing.traced("mini", path):
        for burst in BURSTS:
            for rid, prompt, max_tokens in burst:
                engine.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
            while engine.has_unfinished_requests():
                engine.step()
            time.sleep(1.0)  # idle between bursts: longer than the model can be off over one burst
    return path


def test_the_trace_holds_the_workload_and_config_a_replay_needs(engine_trace):
    run = read_traced_run(engine_trace)
    assert run.engine == "mini"
    assert (run.config.block_size, run.config.num_blocks, run.config.max_num_batched_tokens,
            run.config.max_num_seqs, run.config.max_model_len) == (16, 9, 48, 4, 128)
    by_id = {r.id: r for r in run.workload}
    assert set(by_id) == {rid for burst in BURSTS for rid, _, _ in burst}
    assert [by_id[rid].max_tokens for burst in BURSTS for rid, _, _ in burst] == [4, 4, 3, 24, 24, 24]
    # Without content capture, the prompts are synthetic ids that share exactly the hashed blocks.
    assert by_id["a"].prompt_token_ids[:32] == by_id["b"].prompt_token_ids[:32] == by_id["p2"].prompt_token_ids[:32]
    assert by_id["a"].prompt_token_ids[32:] != by_id["b"].prompt_token_ids[32:]
    assert len(by_id["long"].prompt_token_ids) == 90
    assert any(step.preempted for step in run.steps), "the small pool must force a preemption"
    assert any(sum(step.scheduled.values()) == 48 for step in run.steps), "the long prompt fills the budget"


def test_the_trace_records_the_engines_one_thread_rule_and_the_step_time_model_prices_by_it(engine_trace):
    """The tests run under passive OpenMP waiting (conftest), as `servetrace serve` does: our engine
    then computes a step of at most 4 tokens on one thread (engine/cpu_gemm.py), the trace says so,
    and the model fitted on it computes its features by that rule (and says it in its JSON, which the
    vLLM and SGLang sides read)."""
    import torch

    from engine.cpu_gemm import SERIAL_STEP_MAX_TOKENS
    from tracer.replay.whatif.session import fit_on_trace

    if torch.get_num_threads() == 1:
        pytest.skip("one torch thread: every step is a one-thread step, and the engine has no rule to record")
    run = read_traced_run(engine_trace)
    assert run.serial_step_max_tokens == SERIAL_STEP_MAX_TOKENS
    model, log, _, _ = fit_on_trace(run)
    assert model.serial_step_max_tokens == model.to_json()["serial_step_max_tokens"] == SERIAL_STEP_MAX_TOKENS
    small = [s for s in log.steps if sum(s.scheduled.values()) <= SERIAL_STEP_MAX_TOKENS]
    wide = [s for s in log.steps if sum(s.scheduled.values()) > SERIAL_STEP_MAX_TOKENS]
    assert small and wide
    assert all(s.features[-1] == 0.0 for s in small) and all(s.features[-1] == 1.0 for s in wide)


def test_from_trace_replay_agrees_with_the_server_on_every_step(engine_trace, tmp_path):
    result = replay_from_trace(engine_trace, ["mini", "vllm"], tmp_path / "out")
    for comparison in result.comparisons:
        assert comparison.agree, comparison.to_json()
    assert {c.engine for c in result.comparisons} == {"mini", "vllm-0.33.0"}
    assert (tmp_path / "out" / "compare-trace.json").is_file()


def test_from_trace_catches_a_workload_that_lost_its_shared_prefixes(engine_trace):
    """The planted bug: prompts rebuilt without the block hashes (each its own tokens) miss the
    prefix cache the server hit, and the replay says on which step it parts from the trace."""
    run = read_traced_run(engine_trace)
    for request in run.workload:
        request.prompt_token_ids = synthetic_prompt([], 16, len(request.prompt_token_ids), request.id)
    result = replay_from_trace(engine_trace, ["mini"], run=run)
    (comparison,) = result.comparisons
    assert not comparison.agree and comparison.divergence.fields == ["scheduled"]


def test_whatif_under_the_trace_config_reproduces_its_decisions_and_latencies(engine_trace, tmp_path):
    result = run_whatif(engine_trace, {}, ["mini", "vllm"], tmp_path / "out")
    error = result.model.fit_error
    assert result.measured_decisions.agree, result.measured_decisions.to_json()
    for prediction in result.predictions:
        assert prediction.decisions is not None and prediction.decisions.agree, prediction.decisions.to_json()
        for metric in ("ttft_ms", "itl_ms"):
            predicted, measured = prediction.summary[metric]["mean"], result.measured[metric]["mean"]
            # A mean over steps: within the model's own error on the trace's steps (twice its median
            # per-step error, and 10% for the noise of one loaded CPU run).
            assert abs(predicted - measured) <= max(0.1, 2 * error["median_rel"]) * measured, (metric, predicted, measured, error)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "whatif.json" in names and "trace-predicted-mini-trace-config.jsonl" in names


def test_whatif_changes_the_schedule_with_the_config(engine_trace):
    result = run_whatif(engine_trace, {"max_num_seqs": 1}, ["mini"])
    base, changed = result.predictions
    assert changed.config.max_num_seqs == 1
    assert changed.summary["ttft_ms"]["mean"] > base.summary["ttft_ms"]["mean"]  # one at a time: the rest wait


@pytest.mark.parametrize("sets, message", [
    (["max_num_seq=4"], "unknown key 'max_num_seq'; valid keys: block_size, num_blocks, max_num_seqs"),
    (["max_num_seqs=lots"], "max_num_seqs takes an integer, not 'lots'"),
    (["enable_chunked_prefill=maybe"], "enable_chunked_prefill takes true or false"),
    (["max_num_seqs"], "expected KEY=VALUE"),
])
def test_bad_set_keys_and_values_get_a_clear_error(sets, message):
    with pytest.raises(WhatifError, match=message.replace("(", r"\(")):
        parse_sets(sets)


def test_whatif_cli_says_why_a_changed_config_cannot_run(engine_trace, capsys):
    from tracer.cli import main

    assert main(["whatif", str(engine_trace), "--engines", "mini", "--set", "max_num_batched_tokens=2"]) == 2
    err = capsys.readouterr().err
    assert "the changed config does not run" in err and "max_num_batched_tokens (2) must be >= max_num_seqs (4)" in err


def test_the_explorer_opens_a_whatif_result_and_labels_its_times_predicted(engine_trace, tmp_path):
    from tracer.tui.loader import load_trace
    from tracer.tui.model import build_model
    from tracer.tui.step_time import trace_clock
    from tracer.tui.summary import requests_table

    result = run_whatif(engine_trace, {"max_num_seqs": 2}, ["mini"], tmp_path / "out")
    model = build_model(load_trace(tmp_path / "out" / "trace-predicted-mini-changed.jsonl"))
    assert trace_clock(model) == "predicted"
    assert set(model.requests) == {r.id for r in result.run.workload}
    assert len(model.steps) == len(result.predictions[1].log.steps)
    headers = [column.header for column in requests_table(model).columns]
    assert "pred TTFT" in headers and "TTFT" not in headers
    assert trace_clock(build_model(load_trace(engine_trace))) == "wall"
    # A rerun owns its folder: the files of the last run are replaced, not added to.
    run_whatif(engine_trace, {}, ["mini"], tmp_path / "out")
    assert not (tmp_path / "out" / "trace-predicted-mini-changed.jsonl").exists()


def test_replay_from_trace_cli_replays_the_trace_config_only(engine_trace, tmp_path, capsys):
    from tracer.cli import main

    assert main(["replay", "--from-trace", str(engine_trace), "--engines", "mini", "--out", str(tmp_path / "ft")]) == 0
    assert "mini: agrees with the trace on all" in capsys.readouterr().out
    assert main(["replay", "--from-trace", str(engine_trace), "--max-num-seqs", "2"]) == 2
    assert "--from-trace replays the config the trace recorded; drop max_num_seqs" in capsys.readouterr().err


def test_whatif_runs_sglangs_scheduler_and_our_sglang_mode_on_the_predicted_clock(engine_trace):
    """--engines mini-sglang,sglang: SGLang 0.5.23's real Scheduler (in .venv-sglang) and ours in its
    mode, on the trace's workload and one clock. They decide every step alike, so their predicted
    timelines are the same, under the trace's config and a changed one; every request keeps the
    output length the trace recorded, and one running request at a time makes the rest wait."""
    result = run_whatif(engine_trace, {"max_num_seqs": 1}, ["mini-sglang", "sglang"])
    by = {(p.engine, p.label): p for p in result.predictions}
    assert set(by) == {(e, label) for e in ("mini-sglang", "sglang-0.5.23") for label in ("trace config", "changed")}
    for label in ("trace config", "changed"):
        ours, sglang = by[("mini-sglang", label)], by[("sglang-0.5.23", label)]
        assert not ours.log.stalled and not sglang.log.stalled
        assert [s.to_json() for s in sglang.log.steps] == [s.to_json() for s in ours.log.steps], label
        assert sglang.log.token_times_s == ours.log.token_times_s
        outputs = {rid: len(times) for rid, times in sglang.log.token_times_s.items()}
        assert outputs == {r.id: r.max_tokens for r in result.run.workload}
    assert by[("sglang-0.5.23", "changed")].summary["ttft_ms"]["mean"] > by[("sglang-0.5.23", "trace config")].summary["ttft_ms"]["mean"]


def test_whatif_cli_says_the_fits_held_out_error_and_whether_the_trace_tells_its_constant(engine_trace, tmp_path, capsys):
    from tracer.cli import main

    assert main(["whatif", str(engine_trace), "--engines", "mini", "--set", "max_num_seqs=2",
                 "--out", str(tmp_path / "out")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "on steps held out of its fit: median" in out
    assert "per-step constant" in out


@pytest.mark.parametrize("error, says", [
    ({"held_out": {"median_rel": 0.12, "total_rel": -0.03}, "decode_batches": [1, 8], "constant_identified": True},
     "on steps held out of its fit: median 12.0%, total -3.0%; decode-only steps of 1-8 requests tell its per-step "
     "constant from the per-request cost"),
    ({"decode_batches": [7, 8], "constant_identified": False},
     "too few steps to hold any out of its fit; warning: every decode-only step ran 7-8 requests, so the trace cannot "
     "tell its per-step constant from the per-request cost; a changed batch size is predicted on a guess"),
    ({"decode_batches": None, "constant_identified": False},
     "too few steps to hold any out of its fit; no decode-only step in the trace: its per-step constant is a guess"),
])
def test_whatif_warns_when_the_trace_cannot_tell_the_step_constant(error, says):
    from tracer.commands.whatif import fit_caveats

    assert fit_caveats(error) == says


def _request(rid: str, entered_ms: float, http_start_ms: float | None):
    from tracer.replay.traced_run import TracedRequest

    return TracedRequest(rid, rid, int(entered_ms * 1e6), 0, 8, 4, "length", "token_ids",
                         None if http_start_ms is None else int(http_start_ms * 1e6), None)


def test_queue_arrivals_take_out_the_wait_for_the_traced_step_and_keep_the_api_servers_own_delay():
    from types import SimpleNamespace

    from tracer.replay.whatif.session import queue_arrivals

    # a: reached an idle engine 5 ms after its HTTP start (the API server's own delay);
    # b: sent at 100 ms, taken at 900 ms when a long step ended; c: no HTTP span (its entry stays).
    run = SimpleNamespace(requests=[_request("a", 5, 0), _request("b", 900, 100), _request("c", 950, None)])
    queued = queue_arrivals(run, {"a": 0.005, "b": 0.9, "c": 0.95})
    assert queued == pytest.approx({"a": 0.005, "b": 0.105, "c": 0.95})


def test_a_request_released_during_a_predicted_step_enters_when_that_step_ends():
    from tracer.replay.whatif.session import enter_at_step_ends
    from tracer.replay.whatif.timeline import TimedLog, TimedStep

    log = TimedLog("mini", "predicted", [TimedStep(0.0, 1.0, {}, [], [], []), TimedStep(1.01, 2.0, {}, [], [], [])],
                   {"during": 0.5, "in_the_gap": 1.005, "idle": 2.5, "at_a_start": 1.01})
    enter_at_step_ends(log, gap_s=0.01)
    assert log.arrivals_s == pytest.approx({"during": 1.01, "in_the_gap": 1.01, "idle": 2.5, "at_a_start": 1.01})


def test_an_unknown_arrival_rule_is_refused(engine_trace):
    with pytest.raises(ValueError, match="arrival rule .wall.: choose from queue, entered"):
        run_whatif(engine_trace, {}, ["mini"], arrival_rule="wall")
