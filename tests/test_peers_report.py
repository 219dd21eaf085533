"""The peers bench's verdicts (bench/_peers_report.py) on given numbers: issue 19's targets are
ratios of ours to vLLM's best setting, each side at its best run, and a target says met / NOT met
and by how much. No timing here: the bench measures, this checks the arithmetic it reports."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "_peers_report", Path(__file__).resolve().parent.parent / "bench" / "_peers_report.py")
report = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = report  # its dataclass looks its module up while it is built
SPEC.loader.exec_module(report)


def test_throughput_target_takes_each_side_at_its_best_run_and_vllm_at_its_best_dtype():
    v = report.verdict("2 threads", "offline tok/s, uniform@8", ours=[300.0, 360.0],
                       vllm={"vllm-bfloat16": [250.0, 240.0], "vllm-float32": [120.0]}, higher_is_better=True)
    assert (v.ours, v.vllm, v.vllm_setting) == (360.0, 250.0, "vllm-bfloat16")
    assert v.ratio == pytest.approx(1.44)
    assert v.met and v.goal == ">= 1.20x"
    assert v.gap == "20% above the goal"


def test_throughput_below_the_goal_says_how_much_more_is_needed():
    v = report.verdict("1 thread", "offline tok/s, mixed@32", ours=[200.0], vllm={"vllm-bfloat16": [250.0]},
                       higher_is_better=True)
    assert v.ratio == pytest.approx(0.8)
    assert not v.met
    assert v.gap == "needs 50% more throughput"  # 0.8x -> 1.2x
    assert "NOT met" in v.row()


def test_a_ratio_just_above_one_is_not_the_throughput_goal():
    v = report.verdict("2 threads", "t", ours=[110.0], vllm={"vllm-bfloat16": [100.0]}, higher_is_better=True)
    assert not v.met  # 1.1x is faster than vLLM, but the issue asks for 1.2x


def test_latency_targets_take_the_lowest_run_and_are_met_at_or_below_vllms():
    v = report.verdict("2 threads", "batch-1 decode ms/step", ours=[30.0, 27.0],
                       vllm={"vllm-bfloat16": [28.0, 29.0], "vllm-float32": [45.0]}, higher_is_better=False)
    assert (v.ours, v.vllm, v.vllm_setting) == (27.0, 28.0, "vllm-bfloat16")
    assert v.met and v.goal == "<= 1.00x"
    slower = report.verdict("1 thread", "serving ITL p50 ms, 4 clients", ours=[50.0], vllm={"vllm-float32": [40.0]},
                            higher_is_better=False)
    assert not slower.met
    assert slower.gap == "25% slower than vLLM's (needs 20% off)"


def test_verdicts_cover_every_target_present_and_skip_parts_that_did_not_run():
    pairings = {
        "1 thread": {
            "offline": {key: {"ours": [100.0], "vllm-bfloat16": [90.0]} for key in ("uniform@1", "uniform@8", "uniform@32", "mixed@8", "mixed@32")},
            "batch1_ms": {"ours": [40.0], "vllm-bfloat16": [35.0]},
            "itl_p50_ms": {"1": {"ours": [40.0], "vllm-bfloat16": [36.0]},
                           "4": {"ours": [45.0], "vllm-bfloat16": [50.0]},
                           "16": {"ours": [60.0], "sglang-bfloat16": [55.0]}},  # no vLLM run at 16: no verdict
        },
        "2 threads": {"offline": {"uniform@8": {"ours": [100.0]}}},  # vLLM failed to start: no verdict
    }
    found = report.verdicts(pairings)
    assert [v.target for v in found] == [
        "offline tok/s, uniform@8", "offline tok/s, uniform@32", "offline tok/s, mixed@8", "offline tok/s, mixed@32",
        "batch-1 decode ms/step", "serving ITL p50 ms, 4 clients"]
    assert [v.met for v in found] == [False, False, False, False, False, True]
    assert all(v.pairing == "1 thread" for v in found)
    table = report.verdict_table(found)
    assert len(table) == 2 + len(found)
    assert report.verdict_dicts(found)[-1]["met"] is True


def test_spread_names_single_runs():
    assert report.spread([3.0]) == "1 run"
    assert report.spread([3.0, 1.5, 2.0]) == "1.5..3.0"
