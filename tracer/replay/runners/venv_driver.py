"""A scheduler that only imports in another venv (SGLang's in .venv-sglang, vLLM 0.32's in
.venv-vllm), driven through a subprocess that reads one JSON job per line on stdin and answers one
JSON line on stdout. Started once per process and reused: importing either scheduler takes seconds.
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import threading
from pathlib import Path
from typing import ClassVar

from tracer.replay.runners.base import ReplayError

REPO = Path(__file__).resolve().parents[3]


class VenvJobDriver:
    """One subprocess per subclass; `shared()` starts it on first use and again if it died."""

    what: ClassVar[str]  # names the other side in errors: "the SGLang driver"
    close_timeout_s: ClassVar[float] = 2.0  # it exits at end of input; torch's teardown can linger
    _shared: ClassVar["VenvJobDriver | None"] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, python: Path, args: list[str], env: dict[str, str], keep_stderr: bool = False) -> None:
        if not python.is_file():
            raise ReplayError(f"{self.what} needs {python} (make setup builds it)")
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SERVETRACE_")}
        child_env.update(PYTHONWARNINGS="ignore", **env)
        # keep_stderr: the error says why the other side died (its traceback), read only then.
        self.process = subprocess.Popen([str(python), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE if keep_stderr else subprocess.DEVNULL,
                                        text=True, env=child_env, cwd=str(REPO))
        ready = self._read()
        if not ready.get("ready"):
            raise ReplayError(f"{self.what} did not start: {ready}")

    @classmethod
    def shared(cls) -> "VenvJobDriver":
        with cls._lock:
            current = cls.__dict__.get("_shared")
            if current is None or current.process.poll() is not None:
                current = cls()
                cls._shared = current
                atexit.register(current.close)
            return current

    def _read(self) -> dict:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        stderr = self.process.stderr.read() if self.process.stderr else ""
        raise ReplayError(f"{self.what} exited ({self.process.wait()}): {stderr[-2000:]}")

    def run(self, job: dict) -> dict:
        with self._lock:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
            result = self._read()
        if "error" in result:
            raise ReplayError(f"{self.what} failed: {result['error']}\n{result.get('traceback', '')}")
        return result

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # type: ignore[union-attr]
            try:
                self.process.wait(timeout=self.close_timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
