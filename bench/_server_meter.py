"""What the live-server benches measure around a server: its processes and their CPU time, other
servers sharing this machine's cores, and the per-process hook timers of bench/hook_timer."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
from rich.console import Console


def server_processes(leader_pid: int) -> dict[str, psutil.Process]:
    """role -> process: the API server (the leader) and its children (EngineCore, Worker, helpers)."""
    leader = psutil.Process(leader_pid)
    found = {"api_server": leader}
    for child in leader.children(recursive=True):
        try:
            title = " ".join(child.cmdline()) or child.name()
        except psutil.Error:
            continue
        role = ("engine_core" if "EngineCore" in title else "worker" if "Worker" in title
                else f"other:{child.name()}:{child.pid}")
        found[role if role not in found else f"{role}:{child.pid}"] = child
    return found


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for role, process in processes.items():
        try:
            times = process.cpu_times()
            out[role] = times.user + times.system
        except psutil.Error:
            out[role] = float("nan")
    return out


SERVER_MARKERS = ("vllm.entrypoints", "sglang.launch_server", "sglang.srt", "tracer.cli serve", "servetrace serve")


def foreign_servers(own_pgid: int | None = None) -> list[str]:
    """Other model servers on this machine (other sessions' tests): they would share the cores."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or ())
            if not any(marker in cmdline for marker in SERVER_MARKERS):
                continue
            if own_pgid is not None and os.getpgid(process.info["pid"]) == own_pgid:
                continue
        except (psutil.Error, ProcessLookupError):
            continue
        found.append(f"{process.info['pid']}: {cmdline[:80]}")
    return found


def wait_for_quiet(console: Console, budget: list[float]) -> float:
    """Wait (out of a shared budget of seconds) until no other server runs; returns the seconds waited."""
    start = time.monotonic()
    while budget[0] > 0 and foreign_servers():
        if time.monotonic() - start < 0.1:
            console.print(f"  waiting for another server to finish ({foreign_servers()[0]})")
        time.sleep(2)
        budget[0] -= 2
    return time.monotonic() - start


def read_hook_stats(folder: Path) -> dict[int, dict]:
    stats = {}
    for path in folder.glob("*.json"):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        stats[entry["pid"]] = entry
    return stats


def diff_hook_stats(before: dict[int, dict], after: dict[int, dict]) -> dict:
    """Per process (by its role in argv) and in all: what servetrace's code spent inside the window."""
    keys = ("bind_s", "bind_calls", "begin_s", "begin_cpu_s", "begin_calls", "spans_opened", "end_s", "end_cpu_s",
            "end_calls", "flush_idle_s", "flush_idle_cpu_s", "flush_idle_calls", "export_cpu_s", "export_batches",
            "exported_spans")
    per_pid = {}
    by_hop: dict[str, list] = {}
    for pid, entry in after.items():
        base = before.get(pid, {})
        delta = {k: entry.get(k, 0) - base.get(k, 0) for k in keys}
        if not any(delta.values()):
            continue
        per_pid[str(pid)] = delta
        for hop, values in entry.get("by_hop", {}).items():
            acc = by_hop.setdefault(hop, [0, 0.0, 0.0])
            for i, (now, then) in enumerate(zip(values, base.get("by_hop", {}).get(hop, (0, 0.0, 0.0)))):
                acc[i] += now - then
    total = {k: sum(p[k] for p in per_pid.values()) for k in keys}
    return {"total": total, "per_process": per_pid,
            "by_hop_cpu_us_per_span": {hop: round(1e6 * cpu / c, 1) for hop, (c, wall, cpu) in sorted(by_hop.items()) if c},
            "by_hop_wall_us_per_span": {hop: round(1e6 * wall / c, 1) for hop, (c, wall, cpu) in sorted(by_hop.items()) if c},
            "by_hop_spans": {hop: c for hop, (c, wall, cpu) in sorted(by_hop.items()) if c}}


def machine_busy_s() -> float:
    """CPU seconds every process on this machine has used since boot (all cores: what is not idle)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def tree_cpu_s(leader_pid: int) -> float:
    """CPU seconds of a server's process tree (the leader and every child), what it used so far."""
    try:
        return sum(v for v in cpu_seconds(server_processes(leader_pid)).values() if v == v)
    except psutil.Error:
        return 0.0


def own_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


class Contention:
    """The cores other processes (not the server's tree, not this bench: another session's job)
    used while a run's workload ran: the machine's busy CPU time minus the server's and the bench's
    own, over the wall time. The 1-minute load average lags by a minute and counts the server's own
    threads; this says what the run shared its 2 cores with while it ran."""

    def __init__(self, leader_pid: int) -> None:
        self.leader_pid = leader_pid
        self.start = (time.monotonic(), machine_busy_s(), tree_cpu_s(leader_pid), own_cpu_s())

    def others_cores(self) -> float:
        wall, busy, tree, own = self.start
        now = time.monotonic()
        others = (machine_busy_s() - busy) - (tree_cpu_s(self.leader_pid) - tree) - (own_cpu_s() - own)
        return max(0.0, others) / max(now - wall, 1e-9)


def wait_until_quiet(leader_pid: int, idle_cores: float = 0.15, window_s: float = 1.0, timeout_s: float = 30.0) -> float:
    """Wait until the machine, the server's tree included, uses under idle_cores over window_s (the
    server done warming up, a previous server's processes gone, another session's job over); returns
    the seconds waited (timeout_s at most: then the run goes ahead and its contention says so)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        before = machine_busy_s() - own_cpu_s()
        time.sleep(window_s)
        if machine_busy_s() - own_cpu_s() - before < idle_cores * window_s:
            break
    return time.monotonic() - start
