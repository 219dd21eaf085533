"""Replay: the workload format, its generators, the comparison, the report and the two commands."""
from __future__ import annotations

import json

import pytest
from rich.console import Console

from tracer.cli import main as servetrace
from tracer.replay import workload as W
from tracer.replay.compare import compare_logs, known_differences
from tracer.replay.config import ReplayConfig, ReplayConfigError
from tracer.replay.report import print_report
from tracer.replay.runners import ReplayError, ReplayLog, drive, make_scheduler_runner
from tracer.replay.workload import WorkloadError, WorkloadRequest, load_workload, save_workload


def write_lines(tmp_path, *objects) -> str:
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objects) + "\n")
    return str(path)


# -- workloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(W.GENERATORS))
def test_generators_are_seeded_and_round_trip_through_jsonl(kind, tmp_path):
    first = W.generate(kind, seed=1)
    assert first == W.generate(kind, seed=1)
    assert first != W.generate(kind, seed=2)
    assert len({r.id for r in first}) == len(first)
    loaded = load_workload(save_workload(first, tmp_path / f"{kind}.jsonl"))
    assert sorted(loaded, key=lambda r: r.id) == sorted(first, key=lambda r: r.id)
    assert [r.arrival_step for r in loaded] == sorted(r.arrival_step for r in loaded)


def test_forced_outputs_default_to_deterministic_ids_per_request():
    a = WorkloadRequest("a", 0, [1, 2, 3], max_tokens=5)
    assert a.forced_output() == WorkloadRequest("a", 9, [7], max_tokens=5).forced_output()
    assert a.forced_output() != WorkloadRequest("b", 0, [1, 2, 3], max_tokens=5).forced_output()
    assert len(a.forced_output()) == 5
    given = WorkloadRequest("c", 0, [1], max_tokens=2, output_token_ids=[9, 8, 7])
    assert given.forced_output() == [9, 8]


def test_multi_turn_prompts_extend_the_previous_turn_and_its_answer():
    requests = {r.id: r for r in W.multi_turn(num_conversations=1, num_turns=3)}
    t0, t1 = requests["chat0.t0"], requests["chat0.t1"]
    assert t1.prompt_token_ids[: len(t0.prompt_token_ids) + t0.max_tokens] == t0.prompt_token_ids + t0.forced_output()
    assert t1.arrival_step > t0.arrival_step + t0.max_tokens


def test_arrival_time_maps_to_steps_and_text_prompts_use_the_tokenizer(tmp_path):
    path = write_lines(
        tmp_path,
        {"id": "x", "arrival_time": 0.05, "prompt": "hello world", "max_tokens": 2},
        {"id": "y", "prompt_token_ids": [5, 6], "output_token_ids": [1, 2, 3]},
    )
    requests = {r.id: r for r in load_workload(path, step_seconds=0.02, tokenize=lambda text: [len(w) for w in text.split()])}
    assert requests["x"].arrival_step == 2 and requests["x"].prompt_token_ids == [5, 5]
    assert requests["y"].arrival_step == 0 and requests["y"].max_tokens == 3


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ({"id": "a", "max_tokens": 3}, "give 'prompt_token_ids' or 'prompt'"),
        ({"id": "a", "prompt_token_ids": [], "max_tokens": 3}, "non-empty list"),
        ({"id": "a", "prompt_token_ids": [1], "max_tokens": 0}, "'max_tokens' must be an integer >= 1"),
        ({"id": "a", "prompt_token_ids": [1], "max_tokens": 4, "output_token_ids": [1]}, "cannot stand in"),
        ({"id": "a", "prompt_token_ids": [1], "max_tokens": 1, "arrival_step": -1}, "arrival_step"),
        ({"id": "a", "prompt_token_ids": [1], "max_tokens": 1, "colour": "red"}, "unknown field"),
        ({"id": "a", "prompt": "text", "max_tokens": 1}, "needs a tokenizer"),
    ],
)
def test_bad_workload_lines_name_the_line_and_the_problem(tmp_path, line, message):
    path = write_lines(tmp_path, {"id": "ok", "prompt_token_ids": [1], "max_tokens": 1}, line)
    with pytest.raises(WorkloadError, match=message) as info:
        load_workload(path)
    assert "w.jsonl:2" in str(info.value)


def test_duplicate_ids_and_empty_files_are_refused(tmp_path):
    line = {"id": "a", "prompt_token_ids": [1], "max_tokens": 1}
    with pytest.raises(WorkloadError, match="duplicate request id 'a'"):
        load_workload(write_lines(tmp_path, line, line))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(WorkloadError, match="empty"):
        load_workload(tmp_path / "empty.jsonl")


# -- config and driver -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_blocks": 1}, "null block"),
        ({"policy": "lifo"}, "policy"),
        ({"enable_chunked_prefill": False, "max_num_batched_tokens": 64, "max_model_len": 128}, "chunked prefill disabled"),
        ({"max_num_seqs": 32, "max_num_batched_tokens": 16}, "max_num_seqs"),
        ({"block_size": 0}, "block_size"),
    ],
)
def test_configs_an_engine_cannot_run_are_refused(kwargs, message):
    with pytest.raises(ReplayConfigError, match=message):
        ReplayConfig(**kwargs)


def test_config_files_reject_unknown_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"num_blocks": 32, "max_num_seq": 4}))
    with pytest.raises(ReplayConfigError, match="unknown config key"):
        ReplayConfig.from_file(path)


def test_a_request_larger_than_the_pool_is_refused_before_replay():
    workload = [WorkloadRequest("huge", 0, list(range(100, 400)), max_tokens=4)]
    with pytest.raises(ReplayError, match="could never be scheduled"):
        drive(make_scheduler_runner("mini", ReplayConfig(num_blocks=8)), workload)


def test_step_log_records_admissions_preemptions_and_finishes(tmp_path):
    workload = W.memory_pressure(num_requests=6, max_tokens=(40, 60))
    log = drive(make_scheduler_runner("mini", ReplayConfig(num_blocks=16, max_num_batched_tokens=128)), workload)
    assert {rid for s in log.steps for rid, _ in s.finished} == {r.id for r in workload}
    assert any(s.preempted for s in log.steps)
    assert all(sum(n for _, n in s.scheduled) <= 128 for s in log.steps)
    assert log.steps[-1].num_free_blocks == 15  # every block back in the pool (the null block is never free)
    again = ReplayLog.read(log.write(tmp_path / "steps.json"))
    assert [s.to_json() for s in again.steps] == [s.to_json() for s in log.steps]


# -- comparison and report -------------------------------------------------------------


def test_the_first_divergence_is_reported_with_both_states():
    workload = W.memory_pressure(num_requests=8, max_tokens=(40, 60))
    roomy = drive(make_scheduler_runner("mini", ReplayConfig(num_blocks=64, max_num_batched_tokens=128)), workload)
    tight = drive(make_scheduler_runner("mini", ReplayConfig(num_blocks=16, max_num_batched_tokens=128)), workload)
    comparison = compare_logs(roomy, tight)
    assert not comparison.agree
    d = comparison.divergence
    first_differing = next(i for i, (a, b) in enumerate(zip(roomy.steps, tight.steps)) if a.to_json() != b.to_json())
    assert d.step_index == first_differing and comparison.agreeing_steps == first_differing
    assert d.left_state["running"] == roomy.steps[first_differing].running
    assert d.right_state["num_free_blocks"] == tight.steps[first_differing].num_free_blocks
    assert json.loads(json.dumps(comparison.to_json()))["divergence"]["fields"] == d.fields

    console = Console(record=True, width=160)
    print_report([comparison], console=console)
    text = console.export_text()
    assert f"first divergence: step {d.step}" in text
    assert "Deliberate differences" in text


def test_identical_runs_agree_and_name_the_deliberate_differences():
    workload = W.bursts(num_bursts=2, burst_size=4)
    config = ReplayConfig(num_blocks=64)
    comparison = compare_logs(drive(make_scheduler_runner("mini", config), workload),
                              drive(make_scheduler_runner("mini", config), workload))
    assert comparison.agree and comparison.divergence is None
    assert any("synchronous scheduling" in item for item in known_differences())


# -- the commands ----------------------------------------------------------------------


def test_workload_gen_and_replay_through_all_three_engines(tmp_path, capsys):
    pytest.importorskip("vllm")
    from tracer.traces.trace_file import read_trace_file

    workload_path = tmp_path / "sp.jsonl"
    assert servetrace(["workload", "gen", "shared-prefix", "-n", "12", "--out", str(workload_path)]) == 0
    out = tmp_path / "out"
    rc = servetrace(["replay", str(workload_path), "--engines", "mini,vllm,sglang", "--num-blocks", "64",
                     "--max-num-batched-tokens", "128", "--out", str(out)])
    assert rc == 0, capsys.readouterr().out
    compare = json.loads((out / "compare.json").read_text())
    assert compare["agree"] is True
    assert compare["scheduler"][0]["left_engine"] == "mini" and compare["scheduler"][0]["right_engine"] == "vllm"
    assert compare["radix"]["agree"] is True
    steps = {e: json.loads((out / f"steps-{e}.json").read_text()) for e in ("mini", "vllm")}
    assert steps["mini"]["num_steps"] == steps["vllm"]["num_steps"] > 0
    for engine in ("mini", "vllm"):
        trace = read_trace_file(out / f"trace-{engine}.jsonl")
        assert len(trace.named("scheduler.schedule")) == steps[engine]["num_steps"]
    assert read_trace_file(out / "trace-sglang.jsonl").named("kv.match_prefix")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "missing.jsonl", "--engines", "mini"], "workload file not found"),
        (["replay", "{workload}", "--engines", "mini,trt"], "unknown engine"),
        (["replay", "{workload}", "--engines", "mini", "--num-blocks", "1"], "num_blocks"),
        (["workload", "gen", "mixed", "-n", "3", "--out", "{tmp}/x.jsonl"], "has no request count"),
    ],
)
def test_command_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    workload = save_workload([WorkloadRequest("a", 0, [1, 2], 2)], tmp_path / "w.jsonl")
    argv = [a.format(workload=workload, tmp=tmp_path) for a in argv]
    assert servetrace(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
