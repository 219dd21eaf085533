"""`servetrace whatif TRACE --set KEY=VALUE ...`: the trace's workload through the real schedulers
under the trace's own config and a changed one, on a wall clock, with each step's duration from a
step-time model fitted on the trace's own steps.

1. The trace's workload (tracer.replay.traced_run) is replayed on the trace's clock through the
   traced engine's scheduler (vLLM of the trace's version, or ours): each decision step takes the
   start and end the trace measured. That gives each step's batch features beside its measured
   duration (what the model is fitted on), and the trace's own latencies.
2. The step-time model (tracer.replay.whatif.step_time) is fitted by least squares; its error on
   those steps is reported beside every prediction.
3. Each engine replays the workload on the predicted clock (open-loop requests arrive when they
   arrived, closed-loop ones (tracer.replay.whatif.closed_loop) that long after their predecessor's
   predicted finish; each step takes the model's time) under the trace's config and the changed one.
"""
from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tracer.replay.config import ReplayConfig, ReplayConfigError
from tracer.replay.from_trace import load_replayable
from tracer.replay.output_dir import OutputDir
from tracer.replay.runners.base import ReplayError
from tracer.replay.runners.vllm_venv import VllmVenvDriver, bare_version, installed_vllm_version, vllm_job, where_to_run
from tracer.replay.trace_compare import TraceComparison, compare_decisions
from tracer.replay.traced_run import TracedRun
from tracer.replay.whatif.clock import TimedLog, drive_timed
from tracer.replay.whatif.closed_loop import DEFAULT_GAP_S, Dependency, infer_closed_loop
from tracer.replay.whatif.latency import latencies
from tracer.replay.whatif.predicted_trace import write_predicted_trace
from tracer.replay.whatif.step_time import StepTimeModel, fit_step_time
from tracer.replay.workload import WorkloadRequest

WHATIF_ENGINES = ("mini", "vllm", "mini-sglang", "sglang")
# The replay config keys --set may change (the radix-replay keys do not apply to a scheduler replay).
SETTABLE = {f.name: f.type for f in fields(ReplayConfig) if not f.name.startswith("radix_")}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class WhatifError(ValueError):
    """A --set the replay cannot run (the message lists what is valid)."""


def parse_sets(items: list[str]) -> dict[str, Any]:
    """["max_num_seqs=32", ...] -> {"max_num_seqs": 32}; unknown keys and bad values name what is valid."""
    valid = ", ".join(SETTABLE)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip().replace("-", "_"), text.strip()
        if not sep or not key:
            raise WhatifError(f"--set {item!r}: expected KEY=VALUE; valid keys: {valid}")
        if key not in SETTABLE:
            raise WhatifError(f"--set {item!r}: unknown key {key!r}; valid keys: {valid}")
        kind = SETTABLE[key]
        if kind in (bool, "bool"):
            if text.lower() not in TRUE + FALSE:
                raise WhatifError(f"--set {item!r}: {key} takes true or false, not {text!r}")
            out[key] = text.lower() in TRUE
        elif kind in (int, "int"):
            try:
                out[key] = int(text)
            except ValueError:
                raise WhatifError(f"--set {item!r}: {key} takes an integer, not {text!r}") from None
        else:
            out[key] = text
    return out


def changed_config(base: ReplayConfig, sets: dict[str, Any]) -> ReplayConfig:
    try:
        return ReplayConfig(**{**base.to_json(), **sets})
    except ReplayConfigError as exc:
        raise WhatifError(f"the changed config does not run: {exc}") from None


def parse_whatif_engines(text: str) -> list[str]:
    engines = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in engines if e not in WHATIF_ENGINES]
    if unknown or not engines:
        raise WhatifError(f"unknown engine(s) {unknown or text!r}; whatif drives {', '.join(WHATIF_ENGINES)}")
    return list(dict.fromkeys(engines))


@dataclass
class Prediction:
    engine: str  # mini, vllm-0.32.0 ...
    label: str  # "trace config" | "changed"
    config: ReplayConfig
    log: TimedLog
    summary: dict
    decisions: TraceComparison | None = None  # under the trace's config: against the trace's own steps


@dataclass
class WhatifResult:
    run: TracedRun
    model: StepTimeModel
    measured: dict  # the trace's own latencies (engine-side, on its clock)
    measured_decisions: TraceComparison
    changed: ReplayConfig
    sets: dict[str, Any]
    predictions: list[Prediction] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    closed_loop_gap_s: float = DEFAULT_GAP_S
    dependencies: dict[str, Dependency] = field(default_factory=dict)  # the closed-loop requests

    def to_json(self) -> dict:
        return {
            "trace": self.run.path, "traced_engine": self.run.engine, "traced_version": self.run.engine_version,
            "clock": "predicted", "config": self.run.config.to_json(), "set": self.sets,
            "changed_config": self.changed.to_json(), "step_time_model": self.model.to_json(),
            "measured": self.measured, "measured_replay_agrees": self.measured_decisions.agree,
            "closed_loop": {"gap_s": self.closed_loop_gap_s,
                            "dependencies": {rid: d.to_json() for rid, d in self.dependencies.items()}},
            "predictions": [{"engine": p.engine, "label": p.label, "summary": p.summary,
                             "stalled": p.log.stalled, "num_steps": len(p.log.steps),
                             "decisions": None if p.decisions is None else p.decisions.to_json()}
                            for p in self.predictions],
            "notes": self.notes,
        }


def _engine_name(engine: str, run: TracedRun) -> tuple[str, str | None]:
    """The engine's name in the report and, for vLLM, the version whose Scheduler runs."""
    if engine in ("mini", "mini-sglang"):
        return engine, None
    if engine == "sglang":
        return "sglang-0.5.23", None  # the Scheduler of .venv-sglang (tracer/replay/sglang_side)
    wanted = run.engine_version if run.engine == "vllm" else None
    if where_to_run(wanted) == "in-process":
        return f"vllm-{bare_version(installed_vllm_version())}", None
    return f"vllm-{bare_version(wanted)}", wanted


def timed(engine: str, run: TracedRun, config: ReplayConfig, arrivals_s: dict[str, float], **clock) -> TimedLog:
    """drive_timed through `engine`'s scheduler (vLLM of the trace's version, maybe in its venv)."""
    name, venv_version = _engine_name(engine, run)
    workload: list[WorkloadRequest] = run.workload
    if engine == "mini":
        from tracer.replay.runners.mini import MiniRunner

        log = drive_timed(MiniRunner(config), workload, arrivals_s, **clock)
    elif engine == "mini-sglang":
        from tracer.replay.runners.sglang_scheduler import MiniSglangRunner

        log = drive_timed(MiniSglangRunner(config), workload, arrivals_s, **clock)
    elif engine == "sglang":
        if clock.get("model") is None:
            raise ReplayError("SGLang's scheduler runs on the predicted clock only (a trace of SGLang is not replayed here)")
        from tracer.replay.runners.base import validate_workload
        from tracer.replay.runners.sglang_scheduler import SglangDriver, sglang_job

        validate_workload(workload, config)
        job = sglang_job(workload, config)
        job["timed"] = {"model": clock["model"].to_json(), "arrivals_s": arrivals_s, "after": clock.get("after") or {}}
        log = TimedLog.from_json(SglangDriver.shared().run(job)["log"])
    elif venv_version is None:
        from tracer.replay.runners.vllm import VllmRunner

        log = drive_timed(VllmRunner(config), workload, arrivals_s, **clock)
    else:
        model = clock.get("model")
        job = vllm_job("drive_timed", workload, config, arrivals_s=arrivals_s,
                       model=None if model is None else model.to_json(), trace_steps=clock.get("trace_steps"),
                       after=clock.get("after"), serial_step_max_tokens=clock.get("serial_step_max_tokens", 0))
        log = TimedLog.from_json(VllmVenvDriver.shared().run(job)["log"])
    log.engine = name
    # A request the server aborted mid-step ran its last step without keeping its token
    # (tracer.replay.traced_run): the latencies count only the tokens it kept.
    for request in run.requests:
        if request.kept_output_tokens is not None and request.id in log.token_times_s:
            del log.token_times_s[request.id][request.kept_output_tokens:]
    return log


def fit_on_trace(run: TracedRun) -> tuple[StepTimeModel, TimedLog, TraceComparison, dict[str, float]]:
    """The trace-clock replay, the model fitted on it, how its decisions compare, and the arrivals."""
    origin = run.start_ns
    arrivals = {r.id: (r.arrival_ns - origin) / 1e9 for r in run.requests}
    trace_steps = [((s.start_ns - origin) / 1e9, (s.end_ns - origin) / 1e9) for s in run.steps]
    engine = "vllm" if run.engine == "vllm" else "mini"
    log = timed(engine, run, run.config, arrivals, trace_steps=trace_steps, serial_step_max_tokens=run.serial_step_max_tokens)
    comparison = compare_decisions(log.engine, [s.decisions() for s in log.steps], run.steps, log.stalled)
    rows = [s.features for s in log.steps]
    durations = [s.end_s - s.start_s for s in log.steps]
    gaps = sorted(b.start_s - a.end_s for a, b in zip(log.steps, log.steps[1:]) if b.start_s >= a.end_s)
    gap = gaps[len(gaps) // 2] if gaps else 0.0  # the median: idle waits for an arrival are the few long ones
    model = fit_step_time(rows, durations, gap, _wake(run, trace_steps, arrivals, gap), run.serial_step_max_tokens)
    return model, log, comparison, arrivals


def _wake(run: TracedRun, trace_steps: list[tuple[float, float]], arrivals: dict[str, float], gap: float) -> float:
    """How long an idle engine takes from a request's arrival to the start of the step it starts."""
    first: dict[int, float] = {}
    for request in run.requests:
        step = min(request.arrival_step, len(trace_steps) - 1)
        first[step] = min(first.get(step, float("inf")), arrivals[request.id])
    waits = []
    for step, arrival in first.items():
        previous_end = trace_steps[step - 1][1] if step else float("-inf")
        start = trace_steps[step][0]
        if previous_end < arrival <= start and start - previous_end > 2 * gap:
            waits.append(start - arrival)
    # The longest: requests that reached an idle engine together (a burst) must start one step
    # together, as the busy loop drains its whole input queue before it schedules.
    return max(waits, default=0.0)


ARRIVAL_RULES = ("queue", "entered")


def queue_arrivals(run: TracedRun, entered_s: dict[str, float]) -> dict[str, float]:
    """When each request reached the engine's input queue, not when the engine took it: a busy engine
    drains its queue only between steps, so a trace's entry times carry its own steps' lengths (on
    the validation's live vLLM traces of 12-03, entry minus HTTP start was 399 ms on average under
    prefix caching, 1189 ms without it, 72 ms under a 32-token budget; a few ms at least in each).
    A request's queue time is its HTTP start plus the trace's shortest such delay (the API server's
    own work, when no step was in the way), never after its entry; without an HTTP span, its entry."""
    delays = {r.id: r.arrival_ns - r.client_start_ns for r in run.requests
              if r.id in entered_s and r.client_start_ns is not None and r.arrival_ns >= r.client_start_ns}
    own = min(delays.values(), default=0)
    return {rid: entered - (delays[rid] - own) / 1e9 if rid in delays else entered for rid, entered in entered_s.items()}


def enter_at_step_ends(log: TimedLog, gap_s: float) -> None:
    """A request released while a predicted step ran entered the scheduler when that step ended (the
    busy loop drains its input queue between steps): its latencies count from there, as the trace's do."""
    starts = [s.start_s for s in log.steps]
    for rid, release in log.arrivals_s.items():
        index = bisect.bisect_left(starts, release) - 1  # the last step that began before the release
        if index >= 0 and release < log.steps[index].end_s + gap_s:
            log.arrivals_s[rid] = log.steps[index].end_s + gap_s


def run_whatif(trace: str | Path, sets: dict[str, Any], engines: list[str], out_dir: str | Path | None = None,
               force: bool = False, write_traces: bool = True, closed_loop_gap_s: float = DEFAULT_GAP_S,
               model: StepTimeModel | None = None, arrival_rule: str = "queue") -> WhatifResult:
    """closed_loop_gap_s: the rule's gap (0: every arrival on the wall clock); model: predict with
    this step-time model instead of the one fitted on the trace (the fit is still reported);
    arrival_rule, for the changed config: "queue" (a request arrives when it reached the engine's queue,
    queue_arrivals, and enters at the end of the predicted step it came during) or "entered" (when it
    entered the traced scheduler, as under the trace's own config always)."""
    if arrival_rule not in ARRIVAL_RULES:
        raise ValueError(f"arrival rule {arrival_rule!r}: choose from {', '.join(ARRIVAL_RULES)}")
    run = load_replayable(trace)
    changed = changed_config(run.config, sets)
    fitted, measured_log, measured_decisions, arrivals = fit_on_trace(run)
    model = model or fitted
    dependencies = infer_closed_loop(run, closed_loop_gap_s)
    after = {rid: (d.after, d.lag_s) for rid, d in dependencies.items()}
    # Under the trace's own config a request enters when it entered (the traced steps are the ones
    # it waited for, so the replay keeps the trace's decisions); under a changed config, "queue"
    # releases it when it reached the queue. A closed-loop lag then runs to that queue time.
    queued = queue_arrivals(run, arrivals) if arrival_rule == "queue" else arrivals
    after_queued = {rid: (d.after, d.lag_s - (arrivals[rid] - queued[rid])) for rid, d in dependencies.items()}
    result = WhatifResult(run, model, latencies(measured_log).summary(), measured_decisions, changed, sets,
                          notes=list(run.notes), closed_loop_gap_s=closed_loop_gap_s, dependencies=dependencies)
    if not measured_decisions.agree:
        result.notes.append(f"the trace-clock replay ({measured_log.engine}) does not agree with the trace "
                            f"({measured_decisions.agreeing_steps} of {measured_decisions.traced_steps} steps): the "
                            f"model was fitted on the steps it replayed")
    owned = OutputDir(out_dir, "whatif", force=force) if out_dir is not None else None
    prompt_lens = {r.id: len(r.prompt_token_ids) for r in run.workload}
    for engine in engines:
        for label, config in (("trace config", run.config), ("changed", changed)):
            if label == "changed" and not sets:
                continue
            if label == "changed" and arrival_rule == "queue":
                log = timed(engine, run, config, queued, model=model, after=after_queued)
                enter_at_step_ends(log, model.gap_s)
            else:
                log = timed(engine, run, config, arrivals, model=model, after=after)
            prediction = Prediction(log.engine, label, config, log, latencies(log).summary())
            if label == "trace config":
                prediction.decisions = compare_decisions(log.engine, [s.decisions() for s in log.steps], run.steps,
                                                         log.stalled)
            result.predictions.append(prediction)
            if owned is not None and write_traces:
                slug = "trace-config" if label == "trace config" else "changed"
                path = owned.claim(f"trace-predicted-{log.engine}-{slug}.jsonl")
                result.files.append(write_predicted_trace(log, path, prompt_lens, run.start_ns, f"{log.engine}-{slug}",
                                                          run.engine_version))
    if owned is not None:
        model_path = owned.claim("step-time-model.json")
        model_path.write_text(json.dumps(model.to_json(), indent=1) + "\n")
        report_path = owned.claim("whatif.json")
        report_path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
        result.files[:0] = [report_path, model_path]
    return result


def check_engines_available(engines: list[str], run: TracedRun) -> None:
    for engine in engines:
        if engine == "sglang":
            from tracer.replay.runners.sglang_scheduler import sglang_venv

            if not (sglang_venv() / "bin" / "python").is_file():
                raise WhatifError(f"--engines sglang needs {sglang_venv() / 'bin' / 'python'} (make setup builds it)")
        if engine == "vllm":
            try:
                _engine_name(engine, run)
            except ReplayError as exc:
                raise WhatifError(str(exc)) from None
