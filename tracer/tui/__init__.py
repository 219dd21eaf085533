"""The trace explorer (Textual) and its terminal-less summary (Rich).

Reads trace files and the hop catalog only, never engine internals. Textual is imported
lazily, so `servetrace` starts fast and tracer.tui.model stays usable without a terminal.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def run_explorer(trace_paths: Sequence[str | Path]) -> int:
    """Open the explorer on one or more traces; `x` switches between them and the compare view
    aligns the last two (give them as: ours, then the upstream replay of the same workload)."""
    from tracer.tui.app import ExplorerApp

    if not trace_paths:
        raise ValueError("the explorer needs at least one trace file")
    ExplorerApp.from_paths(trace_paths).run()
    return 0


def print_summary(trace_paths: Sequence[str | Path], console=None) -> None:
    """What the explorer would show, as Rich tables (for runs with no terminal attached)."""
    from tracer.tui.summary import print_summary as _print_summary

    _print_summary(trace_paths, console)
