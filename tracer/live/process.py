"""Run an upstream serving engine as a child server, engine-agnostic.

A `ServerProcess` starts a command in a process group of its own (the engine's children, e.g.
vLLM's EngineCore and Worker, inherit the group), sends its output to a log file, waits until an
HTTP readiness URL answers 200, and stops the whole group: SIGTERM, then SIGKILL after a grace
period. Used as a context manager by the live-server tests and `servetrace demo --engine ...`.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class ServerError(RuntimeError):
    """The server could not be started, did not become ready, or died."""


@dataclass(frozen=True)
class ServerSpec:
    """What to run and how to tell that it is up."""

    name: str
    argv: Sequence[str]
    host: str
    port: int
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)  # added to (or replacing in) os.environ
    unset_env: Sequence[str] = ()  # names removed from the inherited environment
    cwd: Path | None = None
    ready_path: str = "/v1/models"
    startup_timeout_s: float = 300.0
    stop_grace_s: float = 20.0
    poll_interval_s: float = 0.5

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def project_root() -> Path:
    """The checkout servetrace runs from (tracer/live/process.py -> the repository root): where
    `make setup` puts the live servers' venvs (.venv-vllm, .venv-sglang) and the converted model."""
    return Path(__file__).resolve().parents[2]


def converted_model() -> Path:
    """The bundled SmolLM2 as an HF folder (scripts/gguf_to_hf.py): neither live server loads the GGUF."""
    return project_root() / ".models" / "smollm2-135m-instruct-hf"


@dataclass(frozen=True)
class LiveServerOptions:
    """What every live-server launcher takes (tracer.live.vllm.VllmOptions, tracer.live.sglang.SglangOptions
    add their engine's flags); each sets its own venv default."""

    venv: Path
    model: Path = field(default_factory=converted_model)
    served_model_name: str = "smollm2-135m-instruct"
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port
    trace_file: Path | None = None  # SERVETRACE_TRACE: servetrace's plugin writes OTLP/JSON lines
    otlp_endpoint: str | None = None  # SERVETRACE_OTLP
    # The converted weights are float32, as is the transformers oracle; both engines' "auto" would
    # run them in a half type (vLLM's CPU build bfloat16, SGLang float16).
    dtype: str = "float32"
    log_path: Path | None = None  # None: the engine's cache folder, server-<port>.log
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # more environment, wins over the launcher's


def venv_python(venv: Path, model: Path, engine: str) -> Path:
    """The live server's python, or a ServerError saying what to run."""
    python = venv / "bin" / "python"
    if not python.is_file():
        if not (project_root() / "Makefile").is_file():  # servetrace installed from a wheel, not a checkout
            raise ServerError(
                f"the live {engine} venv is missing: the live servers are built by `make setup` in a servetrace "
                "checkout (run make setup there); in your own vLLM / SGLang environment, trace your server "
                "with SERVETRACE_TRACE=trace.jsonl (see the README)"
            )
        raise ServerError(f"the live {engine} venv is missing ({venv}): run `make setup`")
    if not (model / "config.json").is_file():
        raise ServerError(
            f"the converted model is missing ({model}): run `make setup` (or .venv/bin/python scripts/gguf_to_hf.py)"
        )
    return python


# What servetrace's plugin reads in the server's processes (tracer.instrument.otel); written here, not
# imported, so launching a server needs no OpenTelemetry in the launching process.
TRACING_ENV = ("SERVETRACE_TRACE", "SERVETRACE_OTLP")


def server_env(base: dict[str, str], trace_file: Path | None, otlp_endpoint: str | None,
               extra: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The server's environment (base, then tracing, then the caller's extra) and the tracing variables
    to unset: a server started untraced must not inherit the launching shell's SERVETRACE_*."""
    env = dict(base)
    if trace_file is not None:
        env[TRACING_ENV[0]] = str(trace_file)
    if otlp_endpoint is not None:
        env[TRACING_ENV[1]] = otlp_endpoint
    env.pop("SERVETRACE_TRACE_OWNER", None)  # the server's first process owns its trace file (otel.claim_trace_file)
    env.update(extra)
    return env, [name for name in (*TRACING_ENV, "SERVETRACE_TRACE_OWNER") if name not in env]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still there (zombies count until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ServerProcess:
    """One server: start() / wait_ready() / stop(), or `with ServerProcess(spec) as server:`."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.ready_s: float | None = None  # seconds from start() until the readiness URL answered

    @property
    def base_url(self) -> str:
        return self.spec.base_url

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.process is not None:
            raise ServerError(f"{self.spec.name}: already started (pid {self.process.pid})")
        spec = self.spec
        env = {k: v for k, v in os.environ.items() if k not in set(spec.unset_env)}
        env.update(spec.env)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_path, "ab") as log:
            log.write(f"--- {spec.name}: {' '.join(spec.argv)}\n".encode())
            log.flush()
            try:
                self.process = subprocess.Popen(
                    list(spec.argv), env=env, cwd=spec.cwd, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as exc:
                raise ServerError(f"{spec.name}: cannot run {spec.argv[0]}: {exc}") from exc
        self.started_at = time.monotonic()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + self.spec.ready_path, timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, on_wait: Callable[[float], None] | None = None) -> float:
        """Block until the readiness URL answers; returns the seconds since start(). on_wait gets the
        seconds waited so far at each poll (the demo prints progress through a long startup)."""
        if self.process is None or self.started_at is None:
            raise ServerError(f"{self.spec.name}: not started")
        deadline = self.started_at + self.spec.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"{self.spec.name} exited with status {code} before it was ready; "
                    f"log {self.spec.log_path}:\n{log_tail(self.spec.log_path)}"
                )
            if self.ready():
                self.ready_s = time.monotonic() - self.started_at
                return self.ready_s
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.spec.name} not ready at {self.base_url}{self.spec.ready_path} after "
                    f"{self.spec.startup_timeout_s:.0f} s; log {self.spec.log_path}:\n{log_tail(self.spec.log_path)}"
                )
            if on_wait is not None:
                on_wait(time.monotonic() - self.started_at)
            time.sleep(self.spec.poll_interval_s)

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after the grace period. Returns the
        leader's exit status (None if it was never started)."""
        if self.process is None:
            return None
        pgid = self.process.pid  # start_new_session: the leader's pid is the group id
        if group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.spec.stop_grace_s
        while time.monotonic() < deadline:
            self.process.poll()  # reap the leader so it does not count as alive
            if not group_alive(pgid):
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None
