"""`servetrace export TRACE --format perfetto -o out.json`: a trace file for ui.perfetto.dev."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tracer.cli import UserError

FORMATS = ("perfetto",)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="convert a trace file (OTLP/JSON lines) to another format")
    parser.add_argument("trace", help="trace file written with --trace / SERVETRACE_TRACE")
    parser.add_argument("--format", choices=FORMATS, default="perfetto",
                        help="perfetto: Chrome trace-event JSON (ui.perfetto.dev, chrome://tracing)")
    parser.add_argument("-o", "--output", help="output file (default: TRACE with .perfetto.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tracer.traces.perfetto import to_chrome_trace
    from tracer.traces.trace_file import TraceFileError, read_trace_file

    try:
        trace = read_trace_file(args.trace)
    except TraceFileError as exc:
        raise UserError(str(exc)) from None
    for skipped in trace.skipped:
        print(f"servetrace export: skipped line {skipped.line_number}: {skipped.reason}", file=sys.stderr)
    if not trace.spans:
        raise UserError(f"{args.trace} holds no spans")
    output = Path(args.output) if args.output else Path(args.trace).with_suffix(".perfetto.json")
    output.write_text(json.dumps(to_chrome_trace(trace.spans)))
    print(f"wrote {output} ({len(trace.spans)} spans, {len(trace.by_trace())} traces); open it in https://ui.perfetto.dev")
    return 0
