"""One replay session: run a workload through the chosen engines, write the logs, compare."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tracer.replay.compare import Comparison, compare_logs
from tracer.replay.config import ReplayConfig
from tracer.replay.runners import ALL_ENGINES, SCHEDULER_ENGINES, ReplayLog, drive, make_scheduler_runner
from tracer.replay.runners.sglang import compare_radix_logs, replay_radix
from tracer.replay.tracing import traced
from tracer.replay.workload import WorkloadRequest


@dataclass
class ReplayResult:
    logs: dict[str, ReplayLog] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    radix: dict | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return all(c.agree for c in self.comparisons) and (self.radix is None or self.radix["agree"])


def parse_engines(text: str) -> list[str]:
    engines = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ALL_ENGINES]
    if unknown or not engines:
        raise ValueError(f"unknown engine(s) {unknown or text!r}; choose from {', '.join(ALL_ENGINES)}")
    return list(dict.fromkeys(engines))


def run_replay(
    workload: list[WorkloadRequest],
    config: ReplayConfig,
    engines: list[str],
    out_dir: str | Path | None = None,
    radix_page_size: int = 1,
    trace: bool = True,
) -> ReplayResult:
    result = ReplayResult()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    for engine in [e for e in SCHEDULER_ENGINES if e in engines]:
        runner = make_scheduler_runner(engine, config)
        trace_path = out / f"trace-{engine}.jsonl" if (out is not None and trace) else None
        with traced(engine, trace_path) as tracing_notes:
            log = drive(runner, workload)
        result.notes.extend(tracing_notes)
        result.logs[engine] = log
        if out is not None:
            result.files.append(log.write(out / f"steps-{engine}.json"))
            if trace_path is not None and trace_path.exists():
                result.files.append(trace_path)
        if log.stalled:
            result.notes.append(f"{engine}: replay stopped early: {log.stalled}")

    if "mini" in result.logs and "vllm" in result.logs:
        result.comparisons.append(compare_logs(result.logs["mini"], result.logs["vllm"]))

    if "sglang" in engines:
        logs = []
        for engine, trace_name in (("mini", "trace-mini-radix.jsonl"), ("sglang", "trace-sglang.jsonl")):
            trace_path = out / trace_name if (out is not None and trace) else None
            with traced(engine, trace_path) as tracing_notes:
                logs.append(replay_radix(engine, workload, config, radix_page_size))
            result.notes.extend(tracing_notes)
            if trace_path is not None and trace_path.exists():
                result.files.append(trace_path)
        ours, theirs = logs
        result.radix = compare_radix_logs(ours, theirs)
        if out is not None:
            for log in (ours, theirs):
                path = out / f"radix-{log.engine}.json"
                path.write_text(json.dumps(log.to_json(), indent=1))
                result.files.append(path)

    if out is not None:
        compare_path = out / "compare.json"
        compare_path.write_text(json.dumps({
            "agree": result.agree,
            "engines": engines,
            "config": config.to_json(),
            "num_requests": len(workload),
            "scheduler": [c.to_json() for c in result.comparisons],
            "radix": result.radix,
            "notes": result.notes,
        }, indent=1))
        result.files.append(compare_path)
    return result
