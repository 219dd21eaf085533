"""One replay session: run a workload through the chosen engines, write the logs, compare."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tracer.replay.compare import Comparison, compare_logs
from tracer.replay.config import ReplayConfig
from tracer.replay.output_dir import OutputDir
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
    def compared_nothing(self) -> bool:
        """A compare ran over nothing (no steps, no radix records): never agreement."""
        return any(c.compared_nothing for c in self.comparisons) or (self.radix is not None and not self.radix["records"])

    @property
    def agree(self) -> bool:
        if self.compared_nothing:
            return False
        return all(c.agree for c in self.comparisons) and (self.radix is None or self.radix["agree"])


# Our engine in cache_mode "sglang" (engine/sglang_scheduler.py): a mode of the mini engine, not a
# catalog engine; with "sglang" it is compared with SGLang's real Scheduler step by step.
MINI_SGLANG = "mini-sglang"


def parse_engines(text: str) -> list[str]:
    engines = [e.strip() for e in text.split(",") if e.strip()]
    known = (*ALL_ENGINES, MINI_SGLANG)
    unknown = [e for e in engines if e not in known]
    if unknown or not engines:
        raise ValueError(f"unknown engine(s) {unknown or text!r}; choose from {', '.join(known)}")
    return list(dict.fromkeys(engines))


def run_replay(
    workload: list[WorkloadRequest],
    config: ReplayConfig,
    engines: list[str],
    out_dir: str | Path | None = None,
    radix_page_size: int = 1,
    trace: bool = True,
    force: bool = False,
) -> ReplayResult:
    """Replay `workload` through `engines`. With out_dir, the run owns that folder: it replaces
    what the previous replay wrote there (see OutputDir) and refuses a foreign non-empty folder
    unless force."""
    result = ReplayResult()
    owned = OutputDir(out_dir, "replay", force=force) if out_dir is not None else None
    out = owned.root if owned is not None else None

    def claim(name: str) -> Path:
        assert owned is not None
        return owned.claim(name)

    for engine in [e for e in SCHEDULER_ENGINES if e in engines]:
        runner = make_scheduler_runner(engine, config)
        trace_path = claim(f"trace-{engine}.jsonl") if (out is not None and trace) else None
        with traced(engine, trace_path) as tracing_notes:
            log = drive(runner, workload)
        result.notes.extend(tracing_notes)
        result.logs[engine] = log
        if out is not None:
            result.files.append(log.write(claim(f"steps-{engine}.json")))
            if trace_path is not None and trace_path.exists():
                result.files.append(trace_path)
        if log.stalled:
            result.notes.append(f"{engine}: replay stopped early: {log.stalled}")

    result.notes.extend(pool_notes(result.logs, config))

    if "mini" in result.logs and "vllm" in result.logs:
        result.comparisons.append(compare_logs(result.logs["mini"], result.logs["vllm"]))

    if MINI_SGLANG in engines:
        result.comparisons.extend(_sglang_scheduler_replay(workload, config, engines, result, claim if out else None, trace))

    if "sglang" in engines:
        logs = []
        for engine, trace_name in (("mini", "trace-mini-radix.jsonl"), ("sglang", "trace-sglang.jsonl")):
            trace_path = claim(trace_name) if (out is not None and trace) else None
            with traced(engine, trace_path) as tracing_notes:
                logs.append(replay_radix(engine, workload, config, radix_page_size))
            result.notes.extend(tracing_notes)
            if trace_path is not None and trace_path.exists():
                result.files.append(trace_path)
        ours, theirs = logs
        result.radix = compare_radix_logs(ours, theirs)
        if out is not None:
            for log in (ours, theirs):
                path = claim(f"radix-{log.engine}.json")
                path.write_text(json.dumps(log.to_json(), indent=1))
                result.files.append(path)

    if out is not None:
        compare_path = claim("compare.json")
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


def _sglang_scheduler_replay(workload: list[WorkloadRequest], config: ReplayConfig, engines: list[str],
                             result: ReplayResult, claim, trace: bool = True) -> list[Comparison]:
    """Our cache_mode "sglang" scheduler and, with "sglang" listed, SGLang's real Scheduler (in
    .venv-sglang, tracer/replay/sglang_side) on the same workload; their step logs and comparison."""
    from tracer.replay.runners.sglang_scheduler import MiniSglangRunner, replay_sglang_scheduler, sglang_known_differences

    runner = MiniSglangRunner(config)
    trace_path = claim(f"trace-{MINI_SGLANG}.jsonl") if (claim is not None and trace) else None
    with traced("mini", trace_path) as tracing_notes:  # the mini engine's hooks; the catalog names SglangScheduler's hops
        logs = [drive(runner, workload)]
    result.notes.extend(tracing_notes)
    if trace_path is not None and trace_path.exists():
        result.files.append(trace_path)
    if "sglang" in engines:
        sglang_trace = claim("trace-sglang-scheduler.jsonl") if (claim is not None and trace) else None
        logs.append(replay_sglang_scheduler(workload, config, trace_file=sglang_trace))
        if sglang_trace is not None and sglang_trace.exists():
            result.files.append(sglang_trace)
    for log in logs:
        name = log.engine if log.engine == MINI_SGLANG else "sglang-scheduler"
        result.logs[name] = log
        if claim is not None:
            result.files.append(log.write(claim(f"steps-{name}.json")))
        if log.stalled:
            result.notes.append(f"{name}: replay stopped early: {log.stalled}")
    if len(logs) < 2:
        result.notes.append(f"{MINI_SGLANG} alone: add sglang to --engines to compare it with SGLang's scheduler")
        return []
    comparison = compare_logs(*logs)
    comparison.known_differences = sglang_known_differences()
    return [comparison]


def pool_notes(logs: dict[str, ReplayLog], config: ReplayConfig) -> list[str]:
    """Say so when no scheduler run could have preempted: a workload meant to show memory
    pressure replayed on a pool it never fills reports 0 preemptions, which reads like a result."""
    notes = []
    usable = config.num_blocks - 1  # block 0 is the null block
    for engine, log in logs.items():
        if not log.steps or any(step.preempted for step in log.steps):
            continue
        peak = usable - min(step.num_free_blocks for step in log.steps)
        if peak < usable:
            notes.append(
                f"{engine}: the KV pool never filled (at most {peak} of {usable} blocks in use), so no "
                f"preemption was possible; a smaller --num-blocks puts the pool under pressure"
            )
            break  # one engine says it for all: they ran the same workload on the same pool
    return notes
