"""`servetrace tui TRACE [TRACE2 ...]`: open the trace explorer (a Rich summary with no terminal)."""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tui",
        help="explore a trace file: requests, hop waterfall, engine state, source, compare",
        description=(
            "Open the Textual trace explorer on an OTLP/JSON-lines trace file. With a second trace (the same "
            "workload replayed through another engine, e.g. `servetrace replay` writes trace-mini.jsonl "
            "and trace-vllm.jsonl) the compare view aligns both step by step. Without a terminal, or "
            "with --summary, prints a summary instead."
        ),
    )
    parser.add_argument("traces", nargs="+", metavar="TRACE",
                        help="trace files (OTLP/JSON lines); the compare view aligns the last two")
    parser.add_argument("--summary", action="store_true", help="print a Rich summary instead of opening the explorer")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tracer import tui

    from tracer.replay.workload import looks_like_workload

    paths = args.traces
    workload = next((path for path in paths if looks_like_workload(path)), None)
    if workload is not None:
        raise ValueError(f"{workload} is a workload, not a trace: run `servetrace replay {workload}` on it")
    if args.summary or not (sys.stdin.isatty() and sys.stdout.isatty()):
        tui.print_summary(paths)
        return 0
    return tui.run_explorer(paths)
