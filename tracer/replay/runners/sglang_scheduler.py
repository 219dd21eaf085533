"""Scheduler replay against SGLang 0.5.23: our cache_mode "sglang" scheduler (engine/sglang_scheduler.py,
"mini-sglang") in process, and SGLang's real Scheduler in .venv-sglang, in a subprocess
(tracer/replay/sglang_side/driver.py says what it drives and what it does not). Both get the same
workload, forced outputs and step clock, and record the same StepRecord fields: admissions with
their prefix hits, tokens per request, retractions (the `preempted` field), finishes, queues,
free + evictable KV blocks.

Requests run with ignore_eos off on both sides (and no EOS id, so only max_tokens ends them):
SGLang reserves a running request's whole max_new_tokens when ignore_eos is on
(PrefillAdder._get_running_request_total_token_offset, sglang/srt/managers/schedule_policy.py:785),
and only with it off does new_token_ratio, and so retraction, come into play.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from engine.config import CacheConfig, SchedulerConfig
from engine.outputs import SchedulerOutput
from engine.sglang_scheduler import SglangScheduler
from tracer.instrument.otel import capture_content
from tracer.replay.config import ReplayConfig
from tracer.replay.runners.base import ReplayError, ReplayLog, StepRecord, validate_workload
from tracer.replay.runners.mini import MiniRunner
from tracer.replay.runners.venv_driver import REPO, VenvJobDriver
from tracer.replay.workload import WorkloadRequest

DRIVER = REPO / "tracer" / "replay" / "sglang_side" / "driver.py"


def sglang_venv() -> Path:
    return Path(os.environ.get("SERVETRACE_SGLANG_VENV", REPO / ".venv-sglang"))


def sglang_model() -> Path:
    """SGLang's ModelConfig reads config.json: the bundled model as an HF folder (make setup)."""
    return REPO / ".models" / "smollm2-135m-instruct-hf"


class MiniSglangRunner(MiniRunner):
    """Our scheduler in cache_mode "sglang" (SGLang's own loop), driven as MiniRunner drives ours."""

    name = "mini-sglang"
    waiting_order_follows_membership = False  # lpm re-sorts the waiting queue every step: read it whole
    ignore_eos = False  # see the module docstring: only then do new_token_ratio and retraction play

    def make_scheduler(self, config: ReplayConfig, cache_config: CacheConfig) -> SglangScheduler:
        if config.async_scheduling:
            raise ReplayError("async scheduling replays vLLM's AsyncScheduler; SGLang's overlap loop is not replayed")
        scheduler_config = SchedulerConfig(**{**config.scheduler_kwargs(), "cache_mode": "sglang"})
        return SglangScheduler(scheduler_config, cache_config, config.num_blocks,
                               config.priority_scheduling_preemption_threshold)

    def num_free_blocks(self) -> int:
        return self.scheduler.num_free_blocks()

    def output_shape(self, scheduler_output: SchedulerOutput) -> list:
        """Not compared with SGLang: its scheduler hands the worker a ScheduleBatch, not vLLM's
        SchedulerOutput, so the SGLang side records no shape either."""
        return []


class SglangDriver(VenvJobDriver):
    """The SGLang-side subprocess: started once (importing SGLang's scheduler takes ~15 s here)
    and reused for every replay in this process."""

    what = "the SGLang scheduler replay (.venv-sglang)"

    def __init__(self) -> None:
        super().__init__(sglang_venv() / "bin" / "python", [str(DRIVER)], {}, keep_stderr=True)


def sglang_known_differences() -> list[str]:
    """The deliberate differences from SGLang named in engine/sglang_scheduler.py's docstring."""
    import engine.sglang_scheduler

    doc = engine.sglang_scheduler.__doc__ or ""
    match = re.search(r"Deliberate differences[^\n]*\n(.*?)(?:\n\s*\n|\Z)", doc, re.S)
    items = re.split(r"\n- ", "\n" + match.group(1).strip()) if match else []
    return [" ".join(item.split()) for item in items if item.strip()]


def sglang_job(workload: list[WorkloadRequest], config: ReplayConfig) -> dict:
    # Policy fcfs replays SGLang's default order, lpm; policy priority its fcfs with priority
    # scheduling (harness.server_args_for sets --enable-priority-scheduling, low values first, and
    # leaves priority preemption on, its default), as our cache_mode "sglang" maps them.
    schedule_policy = "fcfs" if config.policy == "priority" else "lpm"
    return {
        "config": {**config.to_json(), "schedule_policy": schedule_policy, "ignore_eos": False},
        "model_path": str(sglang_model()),
        "requests": [
            {"id": r.id, "arrival_step": r.arrival_step, "prompt_token_ids": list(r.prompt_token_ids),
             "max_tokens": r.max_tokens, "output_token_ids": r.forced_output(), "priority": r.priority}
            for r in workload
        ],
    }


def replay_sglang_scheduler(workload: list[WorkloadRequest], config: ReplayConfig,
                            driver: SglangDriver | None = None, trace_file: Path | None = None) -> ReplayLog:
    """SGLang's real Scheduler over the workload, one StepRecord per scheduler iteration; with
    trace_file, traced there by servetrace's SGLang hooks inside the subprocess."""
    validate_workload(workload, config)
    job = sglang_job(workload, config)
    if trace_file is not None:
        job["trace_file"] = str(trace_file)
        job["capture_content"] = capture_content()  # the driver's environment drops SERVETRACE_*
    result = (driver or SglangDriver.shared()).run(job)
    log = ReplayLog("sglang", config.to_json(), stalled=result.get("stalled"))
    for step in result["steps"]:
        step.pop("new_token_ratio", None)
        log.steps.append(StepRecord.from_json(step))
    return log

