"""The trace explorer (Textual) and its terminal-less summary (Rich).

Reads trace files and the hop catalog only, never engine internals. Textual is imported
lazily, so `servetrace` starts fast and tracer.tui.model stays usable without a terminal.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def run_explorer(trace_paths: Sequence[str | Path]) -> int:
    """Open the explorer on one trace, or two (the second is the compare view's right side)."""
    from tracer.tui.app import ExplorerApp

    if not 1 <= len(trace_paths) <= 2:
        raise ValueError(f"the explorer opens one or two trace files, got {len(trace_paths)}")
    ExplorerApp.from_paths(trace_paths).run()
    return 0


def print_summary(trace_paths: Sequence[str | Path], console=None) -> None:
    """What the explorer would show, as Rich tables (for runs with no terminal attached)."""
    from tracer.tui.summary import print_summary as _print_summary

    _print_summary(trace_paths, console)
