"""The peers bench's offline part: our LLMEngine and vLLM's `LLM` class, each in a worker process of
its own venv (bench/_peers_offline_worker.py), kept alive so the two can take turns item by item
(ours, vLLM, ours, vLLM, ...) and drifting load on the shared machine hits both sides of a ratio.

Prefix caching is off in both: the items share prompts (uniform@8 starts with uniform@1's prompt)
and every item runs more than once, so with it on, later runs would skip their prefill.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

from _peers_lock import live_lock
from _peers_workload import Item, item_message

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "bench" / "_peers_offline_worker.py"
LOGS = REPO / ".cache" / "peers"
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(REPO / ".cache" / "vllm"), "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class OfflineWorker:
    """One worker process; run(item) sends it an item and waits for its result line."""

    def __init__(self, name: str, python: Path, args: list[str], env: dict[str, str], timeout_s: float = 600,
                 unset_env: tuple[str, ...] = ()) -> None:
        self.name = name
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"offline-{name}.log"
        read_end, write_end = os.pipe()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SERVETRACE_") and k not in unset_env}
        child_env.update(env)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [str(python), str(WORKER), *args, "--result-fd", str(write_end)], stdin=subprocess.PIPE,
                stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_end,), env=child_env, cwd=REPO,
                text=True, start_new_session=True,
            )
        os.close(write_end)
        self.results = os.fdopen(read_end)
        self.info = self._read(timeout_s)["info"]

    def _read(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.results], [], [], 2.0)
            if ready:
                line = self.results.readline()
                if line:
                    return json.loads(line)
            if self.process.poll() is not None:
                break
        self.close()
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"offline worker {self.name} gave no result (log {self.log_path}):\n{tail}")

    def run(self, item: Item, timeout_s: float = 900) -> dict:
        self.process.stdin.write(json.dumps(item_message(item)) + "\n")
        self.process.stdin.flush()
        result = self._read(timeout_s)
        if "error" in result:
            raise RuntimeError(f"{self.name}: {result['error']} (log {self.log_path})")
        if result["output_tokens"] != item.output_tokens:
            raise RuntimeError(f"{self.name} produced {result['output_tokens']} tokens for {item.key}, "
                               f"expected {item.output_tokens} (ignore_eos)")
        return result

    def cpu_s(self) -> float:
        """CPU seconds used so far by the worker's process group (vLLM's EngineCore and Worker with it)."""
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.process.pid:  # pgrp: the worker leads its own session
                total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def wait_until_idle(self, idle_cores: float = 0.05, window_s: float = 0.5, timeout_s: float = 15.0) -> float:
        """Wait until this worker uses under idle_cores of CPU over window_s; returns the seconds waited.

        Why: after an item, vLLM's idle processes keep ~0.2 of a core busy for a few seconds (its
        OpenMP workers spin before they sleep, its engine loop polls; measured 0.21 cores in the 5 s
        after an item, 0.02 after that), so the peer's next item started on a machine with less than
        its cores free. Each item now starts with the other engine idle."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            before = self.cpu_s()
            time.sleep(window_s)
            if self.cpu_s() - before < idle_cores * window_s:
                break
        return time.monotonic() - start

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"quit": True}) + "\n")
                self.process.stdin.close()
                self.process.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:  # the worker's own children (vLLM's EngineCore and Worker) share its process group
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)


def vllm_thread_binding(log_path: Path) -> dict:
    """What vLLM's OMPProcessManager logged: the worker's core ids and the reserved ones."""
    text = log_path.read_text(errors="replace")
    cores = re.findall(r"local_rank=0, core ids=\[([^\]]*)\]", text)
    reserved = re.findall(r"reserved_cpus=\[([^\]]*)\]", text)
    return {"worker_core_ids": cores[-1] if cores else None, "reserved_cpus": reserved[-1] if reserved else None}


def ours_worker(threads: int, dtype: str, common: list[str]) -> OfflineWorker:
    return OfflineWorker(f"ours-{threads}t", REPO / ".venv" / "bin" / "python",
                         ["--engine", "ours", "--threads", str(threads), "--dtype", dtype, "--no-prefix-caching", *common],
                         # No wait policy from this process: LLMEngine imported on its own runs with libgomp's
                         # default (spin, then sleep), as vLLM's LLM class beside it does; `servetrace serve`
                         # waits passively for its shared cores (tracer/cli.py, engine/omp_env.py).
                         {"OMP_NUM_THREADS": str(threads)}, unset_env=("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))


def vllm_worker(dtype: str, reserved_cpus: int | None, common: list[str], enforce_eager: bool) -> OfflineWorker:
    env = dict(VLLM_ENV)
    if reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved_cpus)
    tag = "default" if reserved_cpus is None else f"reserved{reserved_cpus}"
    worker = OfflineWorker(f"vllm-{dtype}-{tag}", REPO / ".venv-vllm" / "bin" / "python",
                           ["--engine", "vllm", "--dtype", dtype, "--no-prefix-caching", *common,
                            *(["--enforce-eager"] if enforce_eager else [])], env)
    worker.info.update(vllm_thread_binding(worker.log_path))
    return worker


def tok_s(result: dict) -> float:
    return result["output_tokens"] / result["elapsed_s"]


def decode_ms(result: dict) -> float:
    """A lone request's decode step: the gap from its first to its last token, per token."""
    return 1000 * (result["last_s"][0] - result["first_s"][0]) / (result["tokens"][0] - 1)


def offline_pairing(threads: int, reserved_cpus: int | None, items: list[Item], vllm_dtypes: list[str], rounds: int,
                    our_dtype: str, common: list[str], enforce_eager: bool, say) -> dict:
    """Ours with `threads` threads against vLLM with `reserved_cpus` (None: its default) in each dtype:
    max(rounds, dtypes) rounds, round r pairing ours with vLLM in dtype r (cycling), item by item."""
    samples: dict[str, dict[str, list[float]]] = {item.key: {} for item in items}
    batch1: dict[str, list[float]] = {}
    runs: list[dict] = []
    infos: dict[str, dict] = {}
    settled: dict[str, float] = {"ours": 0.0}  # seconds waited for the other worker to go idle, per setting

    def record(setting: str, item: Item, result: dict) -> None:
        samples[item.key].setdefault(setting, []).append(tok_s(result))
        entry = {"setting": setting, "item": item.key, "elapsed_s": round(result["elapsed_s"], 3),
                 "output_tokens": result["output_tokens"], "tok_s": round(tok_s(result), 2), "at": time.strftime("%H:%M:%S")}
        if item.concurrency == 1 and item.workload == "uniform":
            batch1.setdefault(setting, []).append(decode_ms(result))
            entry["decode_ms_per_step"] = round(decode_ms(result), 2)
        runs.append(entry)
        say(f"    {setting} {item.key}: {entry['tok_s']:.1f} tok/s" +
            (f", {entry['decode_ms_per_step']:.1f} ms/step" if "decode_ms_per_step" in entry else ""))

    with live_lock(say) as waited:
        ours = ours_worker(threads, our_dtype, common)
        infos["ours"] = ours.info
        try:
            # Round r: ours and vLLM in dtype r (cycling), item by item: ours, vLLM, ours, vLLM, ...
            for index, dtype in enumerate(vllm_dtypes[r % len(vllm_dtypes)] for r in range(max(rounds, len(vllm_dtypes)))):
                setting = f"vllm-{dtype}"
                vllm = vllm_worker(dtype, reserved_cpus, common, enforce_eager)
                infos[setting] = vllm.info
                say(f"  round {index + 1}, {setting}: worker cores {vllm.info['worker_core_ids']}, reserved {vllm.info['reserved_cpus']}")
                try:
                    for item in items:  # each item starts with the other engine's worker idle
                        settled["ours"] += vllm.wait_until_idle()
                        record("ours", item, ours.run(item))
                        settled[setting] = settled.get(setting, 0.0) + ours.wait_until_idle()
                        record(setting, item, vllm.run(item))
                finally:
                    vllm.close()
        finally:
            ours.close()
    return {"threads": threads, "vllm_reserved_cpus": reserved_cpus, "lock_wait_s": round(waited, 1),
            "settings": infos, "tok_s": samples, "batch1_ms": batch1, "runs": runs,
            "waited_for_idle_peer_s": {k: round(v, 1) for k, v in settled.items()}}
