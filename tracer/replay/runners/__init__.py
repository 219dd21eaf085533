"""Replay runners, looked up by engine name.

Which engines exist is catalog data (tracer/catalog/hops.yaml); which of them replay can drive is
this registry. Two kinds of runner, because the upstream engines expose different parts to a
CPU-only replay:
- a scheduler runner (tracer.replay.runners.base.SchedulerRunner) drives a whole scheduler step by
  step (ours; vLLM 0.33's V1 Scheduler + KVCacheManager);
- a radix runner (the small interface of tracer.replay.runners.sglang) drives a prefix cache
  (our RadixCache; SGLang 0.5.23's RadixCache).
Entries are "module:Class" so that listing the registry imports no engine. A fourth engine adds
its runner here (or with register_*_runner), see docs/adding-an-engine.md.
"""
from __future__ import annotations

import importlib
from typing import Any

from tracer.catalog.hops import Catalog, load_catalog
from tracer.replay.config import ReplayConfig
from tracer.replay.runners.base import ReplayError, ReplayLog, SchedulerRunner, StepRecord
from tracer.replay.runners.base import drive as drive_synchronous
from tracer.replay.runners.batch_queue import drive_batch_queue

SCHEDULER_RUNNERS: dict[str, str] = {
    "mini": "tracer.replay.runners.mini:MiniRunner",
    "vllm": "tracer.replay.runners.vllm:VllmRunner",
}
RADIX_RUNNERS: dict[str, str] = {
    "mini": "tracer.replay.runners.sglang:MiniRadix",
    "sglang": "tracer.replay.runners.sglang:SglangRadix",
}


def drive(runner: SchedulerRunner, workload: list, **limits: int) -> ReplayLog:
    """Replay a workload through one scheduler, in the order its config serves in: EngineCore.step
    (schedule, update), or with async_scheduling EngineCore.step_with_batch_queue."""
    if runner.config.async_scheduling:
        return drive_batch_queue(runner, workload, **limits)
    return drive_synchronous(runner, workload, **limits)


class NoReplayRunner(ReplayError):
    """The engine has no runner of the kind asked for (or is not in the catalog at all)."""


def register_scheduler_runner(engine: str, runner: str) -> None:
    """Add (or replace) the scheduler runner of `engine`: "module:Class" of a SchedulerRunner."""
    SCHEDULER_RUNNERS[engine] = runner


def register_radix_runner(engine: str, runner: str) -> None:
    """Add (or replace) the radix runner of `engine`: "module:Class" taking (pool_tokens, page_size)."""
    RADIX_RUNNERS[engine] = runner


def _in_catalog_order(registry: dict[str, str], catalog: Catalog | None) -> tuple[str, ...]:
    engines = (catalog or load_catalog()).engines
    return tuple(name for name in engines if name in registry)


def scheduler_engines(catalog: Catalog | None = None) -> tuple[str, ...]:
    """The catalog's engines that have a scheduler runner, in catalog order."""
    return _in_catalog_order(SCHEDULER_RUNNERS, catalog)


def radix_engines(catalog: Catalog | None = None) -> tuple[str, ...]:
    """The catalog's engines that have a radix (prefix-cache) runner, in catalog order."""
    return _in_catalog_order(RADIX_RUNNERS, catalog)


def replay_engines(catalog: Catalog | None = None) -> tuple[str, ...]:
    """The catalog's engines replay can drive in some way, in catalog order."""
    return _in_catalog_order({**SCHEDULER_RUNNERS, **RADIX_RUNNERS}, catalog)


def _runner_class(kind: str, registry: dict[str, str], engine: str, catalog: Catalog | None) -> Any:
    catalog = catalog or load_catalog()
    if engine not in catalog.engines:
        raise NoReplayRunner(f"unknown engine {engine!r}; the catalog's engines: {', '.join(catalog.engines)}")
    if engine not in registry:
        have = ", ".join(_in_catalog_order(registry, catalog)) or "none"
        raise NoReplayRunner(
            f"engine {engine!r} has no {kind} runner for replay (engines with one: {have}); "
            "docs/adding-an-engine.md says how to add one"
        )
    module, _, name = registry[engine].partition(":")
    return getattr(importlib.import_module(module), name)


def make_scheduler_runner(engine: str, config: ReplayConfig, catalog: Catalog | None = None) -> SchedulerRunner:
    return _runner_class("scheduler", SCHEDULER_RUNNERS, engine, catalog)(config)


def make_radix_runner(engine: str, config: ReplayConfig, page_size: int = 1, catalog: Catalog | None = None) -> Any:
    return _runner_class("radix-cache", RADIX_RUNNERS, engine, catalog)(config.pool_tokens, page_size)


# Read once at import, for the modules that list them (replay's session, the CLI's choices).
SCHEDULER_ENGINES = scheduler_engines()
RADIX_ENGINES = radix_engines()
ALL_ENGINES = replay_engines()

__all__ = [
    "ALL_ENGINES", "NoReplayRunner", "RADIX_ENGINES", "ReplayError", "ReplayLog", "SCHEDULER_ENGINES",
    "SchedulerRunner", "StepRecord", "drive", "make_radix_runner", "make_scheduler_runner", "radix_engines",
    "register_radix_runner", "register_scheduler_runner", "replay_engines", "scheduler_engines",
]
