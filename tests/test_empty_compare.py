"""A compare with nothing to compare says so and fails; it never reports agreement (issue 15).

The explorer once said "agree on all 0 steps" over a radix replay whose SGLang side had no steps.
"""
from __future__ import annotations

import pytest
from rich.console import Console

from tracer.cli import main
from tracer.replay.compare import compare_logs
from tracer.replay.config import ReplayConfig
from tracer.replay.report import print_report
from tracer.replay.runners import ReplayLog
from tracer.replay.session import run_replay
from tracer.traces.trace_file import TraceFile
from tracer.tui.compare import compare_models
from tracer.tui.model import build_model


def test_two_empty_logs_do_not_agree():
    comparison = compare_logs(ReplayLog("mini", {}), ReplayLog("vllm", {}))
    assert comparison.divergence is None and comparison.compared_nothing
    assert not comparison.agree
    assert comparison.to_json()["agree"] is False


def test_replay_of_nothing_reports_nothing_to_compare():
    pytest.importorskip("vllm")
    result = run_replay([], ReplayConfig(), ["mini", "vllm"], trace=False)
    assert result.comparisons and result.compared_nothing and not result.agree
    console = Console(record=True, width=200)
    print_report(result.comparisons, result.radix, console)
    text = console.export_text()
    assert "nothing to compare" in text and "agree on" not in text


def test_the_cli_refuses_an_empty_workload(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code = main(["replay", str(empty), "--engines", "mini,vllm", "--no-trace", "--out", str(tmp_path / "out")])
    assert code != 0
    assert "the workload is empty" in capsys.readouterr().err


def test_the_explorer_compare_of_two_stepless_traces_is_not_agreement():
    left = build_model(TraceFile(spans=[], skipped=[], path="mini-radix.jsonl"))
    right = build_model(TraceFile(spans=[], skipped=[], path="sglang.jsonl"))
    comparison = compare_models(left, right)
    line, agree = comparison.verdict("mini", "sglang")
    assert not agree
    assert "nothing to compare" in line and "agree on all" not in line
