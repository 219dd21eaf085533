"""Replay's runners: looked up by engine name among the catalog's engines, and leaving nothing
behind in the temp dir."""
from __future__ import annotations

import os
import tempfile

import pytest

from tracer.catalog.hops import load_catalog
from tracer.replay import workload as W
from tracer.replay.config import ReplayConfig
from tracer.replay.runners import (
    ALL_ENGINES, RADIX_RUNNERS, SCHEDULER_RUNNERS, NoReplayRunner, drive, make_radix_runner, make_scheduler_runner,
    replay_engines, scheduler_engines,
)
from tracer.replay.runners.vllm import MODEL_DIR_PREFIX


def test_replay_engines_are_the_catalogs_engines_that_have_a_runner():
    catalog = load_catalog()
    assert ALL_ENGINES == replay_engines(catalog)
    assert set(ALL_ENGINES) <= set(catalog.engines)
    assert list(ALL_ENGINES) == [e for e in catalog.engines if e in SCHEDULER_RUNNERS or e in RADIX_RUNNERS]
    # Today's three: our scheduler and vLLM's are replayed step by step; SGLang's radix cache against ours.
    assert scheduler_engines(catalog) == ("mini", "vllm")
    assert set(RADIX_RUNNERS) == {"mini", "sglang"}


def test_a_runner_is_found_by_engine_name():
    runner = make_scheduler_runner("mini", ReplayConfig(num_blocks=32))
    assert runner.name == "mini"
    log = drive(runner, W.shared_prefix())
    assert log.steps and not log.stalled
    assert make_radix_runner("mini", ReplayConfig(num_blocks=32)).name == "mini"


def test_an_engine_without_a_runner_of_that_kind_is_a_clear_error():
    with pytest.raises(NoReplayRunner, match=r"engine 'sglang' has no scheduler runner for replay \(engines with one: mini, vllm\)"):
        make_scheduler_runner("sglang", ReplayConfig())
    with pytest.raises(NoReplayRunner, match=r"engine 'vllm' has no radix-cache runner"):
        make_radix_runner("vllm", ReplayConfig())
    with pytest.raises(NoReplayRunner, match=r"unknown engine 'tgi'; the catalog's engines: mini, vllm"):
        make_scheduler_runner("tgi", ReplayConfig())


def test_a_vllm_replay_leaves_no_model_folder_in_the_temp_dir(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where TemporaryDirectory puts it
    runner = make_scheduler_runner("vllm", ReplayConfig(num_blocks=32))
    # vLLM was given a folder under tmp_path (so the check below looks in the right place) ...
    assert runner.scheduler.vllm_config.model_config.model.startswith(str(tmp_path / MODEL_DIR_PREFIX))
    log = drive(runner, W.shared_prefix())
    assert log.steps and not log.stalled  # ... and needed it only while building the scheduler
    assert list(tmp_path.glob(MODEL_DIR_PREFIX + "*")) == []


def test_building_vllms_scheduler_leaves_this_processs_environment_as_it_was(monkeypatch):
    """VllmConfig's CPU platform hook edits os.environ for the worker processes vLLM would start
    (LD_PRELOAD torch's libgomp, LOCAL_WORLD_SIZE, ...); replay starts none, so nothing of it may reach
    the processes this one starts later (a server whose libgomp would read its settings too early)."""
    for key in ("LD_PRELOAD", "LOCAL_WORLD_SIZE", "VLLM_WORKER_MULTIPROC_METHOD", "NUMEXPR_MAX_THREADS"):
        monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    make_scheduler_runner("vllm", ReplayConfig(num_blocks=32))
    assert dict(os.environ) == before
