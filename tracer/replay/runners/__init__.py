"""Replay runners: one per engine (mini = ours, vllm = vLLM 0.33's V1 Scheduler, sglang = SGLang's RadixCache)."""
from __future__ import annotations

from tracer.replay.config import ReplayConfig
from tracer.replay.runners.base import ReplayError, ReplayLog, SchedulerRunner, StepRecord, drive

SCHEDULER_ENGINES = ("mini", "vllm")
ALL_ENGINES = ("mini", "vllm", "sglang")


def make_scheduler_runner(engine: str, config: ReplayConfig) -> SchedulerRunner:
    if engine == "mini":
        from tracer.replay.runners.mini import MiniRunner

        return MiniRunner(config)
    if engine == "vllm":
        from tracer.replay.runners.vllm import VllmRunner

        return VllmRunner(config)
    raise ValueError(f"no scheduler runner for engine {engine!r}; choose from {', '.join(SCHEDULER_ENGINES)}")


__all__ = ["ReplayError", "ReplayLog", "SchedulerRunner", "StepRecord", "drive", "make_scheduler_runner"]
