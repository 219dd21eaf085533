"""`servetrace tui --listen` under load: OTLP/HTTP posted at a rate by a real HTTP client (another
process, keep-alive, on 127.0.0.1), spans ingested per second, and keystrokes timed key to paint
(bench/tui_bench.py's PaintProbe, adapted: LivePaintProbe) while the spans arrive. Target: >= 10,000 spans/s ingested with
keystrokes under 50 ms.

The traffic is a live vLLM trace (tests/data/live-vllm.jsonl by default) copied over and over:
each copy gets its own trace / span ids, request ids and a later clock, regrouped into protobuf
ExportTraceServiceRequests of 512 spans (the OTel SDK's BatchSpanProcessor batch), as servetrace's
plugin sends them with SERVETRACE_OTLP. The explorer runs headless (Textual's run_test, 80x24) with a
window of --window requests, so old copies are dropped as new ones arrive.

    .venv/bin/python bench/tui_listen_bench.py
Results: bench/results/tui_listen.json and tui_listen.md.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

DEFAULT_SAMPLE = REPO / "tests" / "data" / "live-vllm.jsonl"
INGEST_TARGET, KEY_TARGET_MS = 10_000, 50.0

from _tui_listen_client import BATCH_SPANS, client  # noqa: E402


def ui_thread_times() -> tuple[float, float]:
    """(ms on a CPU, ms runnable but waiting for one) of the calling thread so far, from Linux's
    /proc/self/task/TID/schedstat; (nan, nan) elsewhere. Over a key, the first is the UI thread's
    own work, the second the machine's other work (other processes), and what is left of the
    key's time it waited for the GIL (another thread of ours) or for a timer."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as stat:
            on_cpu, waiting, _ = stat.read().split()
    except (OSError, ValueError):
        return float("nan"), float("nan")
    return int(on_cpu) / 1e6, int(waiting) / 1e6


class LivePaintProbe:
    """tui_bench.PaintProbe for a live app: key to the last screen refresh before idle, leaving
    out refreshes of a model swap that began after the key was painted (the swap's own repaint,
    not the key's). A key that waited for a swap (the swap ran between the key and its paint)
    counts that wait. The UI thread's CPU and run-queue times are read at the key and at each
    paint of it (ui_thread_times)."""

    def __init__(self, app) -> None:
        from textual import events

        self.key_at: float | None = None
        self.painted_at: float | None = None
        self.times_at_key = self.times_at_paint = (0.0, 0.0)
        self.swapped_since_key = False
        self.swap_ms: list[float] = []
        handle_event, screen, swap = app.on_event, app.screen, app.swap_model
        refresh = screen._compositor_refresh

        async def on_event(event):
            if isinstance(event, events.Key):
                self.key_at, self.painted_at, self.swapped_since_key = time.perf_counter(), None, False
                self.times_at_key = ui_thread_times()
            return await handle_event(event)

        def compositor_refresh():
            refresh()
            if self.painted_at is None or not self.swapped_since_key:
                self.painted_at = time.perf_counter()
                self.times_at_paint = ui_thread_times()

        def swap_model(model):
            started = time.perf_counter()
            swap(model)
            self.swap_ms.append(1000 * (time.perf_counter() - started))
            if self.painted_at is not None:
                self.swapped_since_key = True

        app.on_event = on_event
        screen._compositor_refresh = compositor_refresh
        app.swap_model = swap_model

    def last_ms(self) -> float:
        if self.key_at is None or self.painted_at is None:
            return float("nan")
        return 1000 * (self.painted_at - self.key_at)

    def last_ui_times(self) -> tuple[float, float]:
        """The last key's (UI thread on a CPU, UI thread waiting for a CPU), ms."""
        return (self.times_at_paint[0] - self.times_at_key[0], self.times_at_paint[1] - self.times_at_key[1])


class GcLog:
    """Every cyclic-GC collection in this process while installed (gc.callbacks): when it began, how
    long it took, its generation and the thread that ran it. A collection holds the GIL: whichever
    thread runs it, the UI thread waits."""

    def __init__(self) -> None:
        # (start s, wall ms, generation, thread, CPU ms: thread_time, what the collection itself cost)
        self.collections: list[tuple[float, float, int, str, float]] = []
        self._started: float | None = None
        self._cpu = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started, self._cpu = time.perf_counter(), time.thread_time()
        elif self._started is not None:
            now, cpu = time.perf_counter(), time.thread_time()
            self.collections.append((self._started, 1000 * (now - self._started), info["generation"],
                                     threading.current_thread().name, 1000 * (cpu - self._cpu)))
            self._started = None

    def __enter__(self) -> "GcLog":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def summary(self, keys: list[tuple[float, float, tuple[float, float]]], slow_ms: float) -> dict:
        """Pauses by generation, and for each key slower than slow_ms the collections inside it
        and the UI thread's time on a CPU and waiting for one (LivePaintProbe.last_ui_times)."""
        by_generation = {}
        for generation in (0, 1, 2):
            ms = [c[1] for c in self.collections if c[2] == generation]
            cpu = [c[4] for c in self.collections if c[2] == generation]
            by_generation[generation] = {"count": len(ms), "max_ms": round(max(ms), 1) if ms else 0.0,
                                         "total_ms": round(sum(ms), 1), "over_10ms": sum(1 for m in ms if m > 10),
                                         "cpu_max_ms": round(max(cpu), 1) if cpu else 0.0, "cpu_total_ms": round(sum(cpu), 1)}
        slow = []
        for key_at, painted_at, (on_cpu, waiting) in keys:
            if 1000 * (painted_at - key_at) <= slow_ms:
                continue
            inside = [c for c in self.collections if c[0] < painted_at and c[0] + c[1] / 1000 > key_at]
            slow.append({"key_ms": round(1000 * (painted_at - key_at), 1),
                         "ui_cpu_ms": round(on_cpu, 1), "ui_waiting_for_a_cpu_ms": round(waiting, 1),
                         "gc_ms_inside": round(sum(c[1] for c in inside), 1),
                         "collections": [(c[2], round(c[1], 1), c[3], round(c[4], 1)) for c in inside if c[1] >= 1.0]})
        return {"by_generation": by_generation, "slow_keys": slow,
                "slow_keys_with_a_10ms_collection": sum(1 for k in slow if any(c[1] >= 10 for c in k["collections"]))}


async def explorer_under_load(sample: Path, rate: float, seconds: float, window_size: int) -> dict:
    from tui_bench import percentile

    from tracer.commands._ports import listen
    from tracer.traces.receiver import start_receiver
    from tracer.tui.live import LiveExplorerApp, LiveWindow

    receiver = start_receiver(listen("127.0.0.1", 0, "--listen"))
    port = receiver.address[1]
    window = LiveWindow(window_size)
    app = LiveExplorerApp(receiver, window)
    proc = subprocess.Popen([sys.executable, __file__, "--client", str(port), "--sample", str(sample),
                             "--rate", str(rate), "--seconds", str(seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline())
    result: dict = {"offered_spans_per_s": rate, "seconds": seconds, "window": window_size, **ready}
    gc_log = GcLog()
    key_times: list[tuple[float, float, tuple[float, float]]] = []
    async with app.run_test(size=(80, 24)) as pilot:
        gc_log.__enter__()
        await pilot.pause()
        probe = LivePaintProbe(app)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        start = time.perf_counter()
        samples: list[tuple[float, int]] = []
        paint_ms: list[float] = []
        keys = ("down", "n", "up", "n")
        index = 0
        # Keys once the explorer shows requests: a key on the empty table changes nothing, and the
        # probe counted the first model's paint (~150 ms later) as that key's (seen: 230-310 ms).
        while app.models_shown == 0 and proc.poll() is None:
            await asyncio.sleep(0.02)
        while proc.poll() is None:
            await pilot.press(keys[index % len(keys)])
            await pilot.pause()
            paint = probe.last_ms()
            if paint == paint:  # not NaN: the key changed the screen
                paint_ms.append(paint)
                key_times.append((probe.key_at, probe.painted_at, probe.last_ui_times()))
            index += 1
            samples.append((time.perf_counter() - start, window.stats.spans_received))
            await asyncio.sleep(0.1)
        sent = json.loads(proc.stdout.read().strip().splitlines()[-1])
        # Until everything posted is in the window (or 10 s more).
        deadline = time.perf_counter() + 10
        while window.stats.spans_received < sent["sent_spans"] and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        ingested_at = time.perf_counter() - start
        received = window.stats.spans_received
        await asyncio.sleep(app.feed.rebuild_s * 2 + (max(app.feed.build_s) if app.feed.build_s else 0))
        await pilot.pause()
        gc_log.__exit__()
        shown = [r.request_id for r in app.model.requests.values()]
        result.update(
            sent, received_spans=received, ingest_s=ingested_at, ingested_spans_per_s=received / ingested_at,
            keys=len(paint_ms), key_paint_p50_ms=percentile(paint_ms, 0.5) if paint_ms else None,
            key_paint_p95_ms=percentile(paint_ms, 0.95) if paint_ms else None,
            key_paint_max_ms=max(paint_ms) if paint_ms else None, key_paint_ms=paint_ms,
            swap_p50_ms=statistics.median(probe.swap_ms) if probe.swap_ms else None,
            swap_max_ms=max(probe.swap_ms) if probe.swap_ms else None,
            builds=len(app.feed.build_s), build_p50_s=statistics.median(app.feed.build_s) if app.feed.build_s else None,
            build_max_s=max(app.feed.build_s) if app.feed.build_s else None,
            requests_shown=len(shown), requests_dropped=window.stats.requests_dropped, notice=window.notice(),
            newest_kept=_newest_kept(shown, ready["bodies"] * BATCH_SPANS // max(ready["spans_per_copy"], 1)),
            received_over_time=samples[:: max(1, len(samples) // 40)],
            gc=gc_log.summary(key_times, KEY_TARGET_MS),
        )
    receiver.stop()
    return result


def _newest_kept(shown: list[str], copies: int) -> bool:
    """The window holds the last copies' requests (ids end in -cK; the newest K must be there)."""
    numbers = [int(m[1]) for m in (re.search(r"-c(\d+)(?: \(\d+\))?$", rid) for rid in shown) if m]
    return bool(numbers) and max(numbers) >= copies - 2


def _spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}" if len(values) > 1 else f"{values[0]:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="trace whose copies are posted")
    parser.add_argument("--rate", type=float, default=15_000, help="spans per second offered")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long the client posts")
    parser.add_argument("--window", type=int, default=200, help="requests the explorer keeps")
    parser.add_argument("--runs", type=int, default=3, help="runs, one after the other (the machine is shared: "
                                                            "each is reported, and the keys of all together)")
    parser.add_argument("--freeze", choices=("on", "off"), default=None,
                        help="freeze the heap after each export (tracer.tui.live.FREEZE_INGESTED); default: as shipped")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client is not None:
        print(json.dumps(client(args.client, args.sample, args.rate, args.seconds)), flush=True)
        return 0

    from rich.console import Console
    from rich.table import Table
    from tui_bench import percentile

    import tracer.tui.live as live

    if args.freeze is not None:
        live.FREEZE_INGESTED = args.freeze == "on"
    runs = []
    for _ in range(args.runs):
        load_before = os.getloadavg()[0]
        result = asyncio.run(explorer_under_load(args.sample, args.rate, args.seconds, args.window))
        result["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        result["freeze_ingested"] = live.FREEZE_INGESTED
        result["key_paint_p99_ms"] = percentile(result["key_paint_ms"], 0.99) if result["key_paint_ms"] else None
        runs.append(result)
    result = runs[-1]
    keys = [ms for run in runs for ms in run["key_paint_ms"]]
    table = Table(title=f"tui --listen: {result['sent_spans']:,} spans posted as protobuf in "
                        f"{result['elapsed_s']:.1f} s per run, {len(runs)} run(s), window {args.window} requests, "
                        f"heap frozen after each export: {'yes' if live.FREEZE_INGESTED else 'no'}")
    for name, justify in (("measure", "left"), ("value", "right"), ("target", "right")):
        table.add_column(name, justify=justify)
    table.add_row("offered (client, keep-alive HTTP)",
                  f"{_spread([r['sent_spans'] / r['elapsed_s'] for r in runs])} spans/s", "")
    table.add_row("ingested (parsed into the window)", f"{_spread([r['ingested_spans_per_s'] for r in runs])} spans/s",
                  f">= {INGEST_TARGET:,}")
    table.add_row("spans received / posted", " · ".join(f"{r['received_spans']:,} / {r['sent_spans']:,}" for r in runs), "all")
    table.add_row(f"key to paint while ingesting, p50 / p99 / max ({len(keys)} keys, all runs)",
                  f"{percentile(keys, 0.5):.1f} / {percentile(keys, 0.99):.1f} / {max(keys):.1f} ms", f"< {KEY_TARGET_MS:.0f} ms")
    for number, run in enumerate(runs, 1):
        table.add_row(f"  run {number}: p50 / p99 / max ({run['keys']} keys); load avg {run['load_average_1min'][0]:.1f}"
                      f" -> {run['load_average_1min'][1]:.1f}",
                      f"{run['key_paint_p50_ms']:.1f} / {run['key_paint_p99_ms']:.1f} / {run['key_paint_max_ms']:.1f} ms", "")
    table.add_row("first key (pressed as the first model is shown), each run",
                  " · ".join(f"{run['key_paint_ms'][0]:.1f}" for run in runs if run["key_paint_ms"]) + " ms", "")
    table.add_row(f"model rebuilds (off the UI thread), p50 / max (last run: {result['builds']})",
                  f"{result['build_p50_s'] * 1000:.0f} / {result['build_max_s'] * 1000:.0f} ms", "")
    table.add_row("model swap on the UI thread, p50 / max (all runs)",
                  f"{statistics.median([r['swap_p50_ms'] for r in runs]):.0f} / {max(r['swap_max_ms'] for r in runs):.0f} ms", "")
    for generation in (0, 1, 2):
        stats = [r["gc"]["by_generation"][generation] for r in runs]
        table.add_row(f"GC generation {generation}: collections / over 10 ms / max wall / max CPU (all runs)",
                      f"{sum(g['count'] for g in stats)} / {sum(g['over_10ms'] for g in stats)} / "
                      f"{max(g['max_ms'] for g in stats):.1f} / {max(g['cpu_max_ms'] for g in stats):.1f} ms", "")
    slow = [k for r in runs for k in r["gc"]["slow_keys"]]
    table.add_row(f"keys over {KEY_TARGET_MS:.0f} ms / with a collection of 10+ ms inside",
                  f"{len(slow)} / {sum(r['gc']['slow_keys_with_a_10ms_collection'] for r in runs)}", "0")
    table.add_row("requests shown / dropped", f"{result['requests_shown']} / {result['requests_dropped']:,}", "")
    table.add_row("newest requests kept", "yes" if all(r["newest_kept"] for r in runs) else "NO", "yes")
    console = Console()
    console.print(table)
    console.print(f"explorer says: {result['notice']}")
    for key in slow[:12]:
        console.print(f"  slow key {key['key_ms']:.1f} ms: UI thread on a CPU {key['ui_cpu_ms']:.1f} ms, waiting for "
                      f"one {key['ui_waiting_for_a_cpu_ms']:.1f} ms; GC inside {key['gc_ms_inside']:.1f} ms "
                      f"(generation, wall ms, thread, CPU ms of each of 1+ ms: {key['collections']})")
    if args.no_write:
        return 0
    from _results import run_meta, write_results

    recording = Console(record=True, width=110, file=open("/dev/null", "w"))
    recording.print(table)
    meta = run_meta(sample=str(args.sample.relative_to(REPO) if args.sample.is_relative_to(REPO) else args.sample))
    write_results("tui_listen", "tui --listen: ingestion and keystrokes under load", meta,
                  {"result": result, "runs": runs,
                   "targets": {"ingested_spans_per_s": INGEST_TARGET, "key_paint_ms": KEY_TARGET_MS}},
                  ["```", recording.export_text().rstrip(), "```", "",
                   f"The explorer's warning line at the end: `{result['notice']}`.",
                   "Key to paint: from the app taking the key to its last screen refresh before idle "
                   "(bench/tui_bench.py's PaintProbe), leaving out the repaint of a model swap that began after the key "
                   "was painted; a key that waited for a swap counts the wait. The machine is shared (2 cores): each "
                   "run's 1-minute load average before and after it is on its row; ranges are min-max over the runs."])
    console.print("wrote bench/results/tui_listen.json and tui_listen.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
