"""`servetrace explain TRACE [--request ID] [--json]`: why each request took the time it took, and
why it got the prefix-cache hits it got, read from the trace alone."""
from __future__ import annotations

import argparse
import json
import sys

from tracer.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="where each request's time went (by cause, step by step) and why its prefix-cache lookup missed")
    parser.add_argument("trace", help="trace file (OTLP/JSON lines) of our engine, a replay (vLLM or SGLang scheduler), or a live vLLM / SGLang server")
    parser.add_argument("--request", metavar="ID", help="only this request (its external or internal id)")
    parser.add_argument("--steps", action="store_true", help="list every step the request waited or ran in")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tracer.traces.explain_cache import explain_cache
    from tracer.traces.explain_time import split_time
    from tracer.traces.request_steps import NOT_EXPLAINED, read_timeline, unexplained_engines
    from tracer.traces.trace_file import TraceFileError, read_trace_file

    try:
        trace = read_trace_file(args.trace)
    except (TraceFileError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    for skipped in trace.skipped:
        print(f"servetrace explain: skipped line {skipped.line_number}: {skipped.reason}", file=sys.stderr)
    engines = unexplained_engines(trace.spans)
    if engines:
        raise UserError(f"{args.trace} is a trace of {', '.join(sorted(engines))}: {NOT_EXPLAINED}")
    timeline = read_timeline(trace.spans)
    lives = timeline.requests
    if args.request:
        life = timeline.find(args.request)
        if life is None:
            known = ", ".join(life.name for life in lives[:8])
            raise UserError(f"no request {args.request!r} in {args.trace} (it has {len(lives)}: {known}{' ...' if len(lives) > 8 else ''})")
        lives = [life]
    if not lives:
        raise UserError(f"{args.trace} holds no request traces (only steps or startup): nothing to explain")
    results = [(split_time(timeline, life), explain_cache(timeline, life)) for life in lives]
    if args.json:
        print(json.dumps([{"time": t.to_json(), "cache": c.to_json()} for t, c in results], indent=1))
        return 0
    _print_tables(results, args.steps)
    return 0


def _print_tables(results: list, steps: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=not sys.stdout.isatty())
    for split, cache in results:
        table = Table(title=f"{split.request}: {split.wall_ms:.1f} ms", title_justify="left", show_edge=False)
        table.add_column("where the time went")
        table.add_column("ms", justify="right")
        table.add_column("share", justify="right")
        for label, ms in split.parts.items():
            table.add_row(label, f"{ms:.2f}", f"{ms / split.wall_ms:.1%}" if split.wall_ms else "-")
        table.add_row("[dim]residual (no cause)[/dim]", f"{split.residual_ms:.2f}",
                      f"{split.residual_ms / split.wall_ms:.1%}" if split.wall_ms else "-")
        console.print(table)
        if steps:
            for note in split.steps:
                console.print(f"  step {note.step:>4} +{note.start_ms:8.1f} ms  {note.what:<28} {note.detail}")
        line = (f"  prefix cache: {cache.cached_tokens} of {cache.prompt_tokens} prompt tokens cached "
                f"({cache.units_hit()}; {cache.granularity() or 'no block size recorded'}) -> [bold]{cache.reason}[/bold]: {cache.evidence}")
        if cache.uncached_tokens and cache.est_prefill_ms is not None and cache.reason not in ("full-hit",):
            line += f"; {cache.uncached_tokens} tokens computed, about {cache.est_prefill_ms:.1f} ms of prefill"
        console.print(line)
        console.print()
