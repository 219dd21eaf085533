"""`servetrace whatif TRACE --set KEY=VALUE`: a trace's workload under another scheduler config,
replayed through the real schedulers with steps timed by a model fitted on the trace."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "whatif",
        help="predict a traced workload's latencies under another scheduler config",
        description=(
            "Replay the workload TRACE recorded (arrival times, prompts or block hashes, output lengths) through "
            "the real vLLM scheduler (the trace's version) and ours, under the trace's own config and under the "
            "config --set changes, on a wall clock: requests arrive when they arrived, each step takes the time "
            "a step-time model fitted on the trace's own steps predicts, and the schedulers decide. Reports "
            "TTFT / TPOT / ITL / throughput side by side with the model's own error on the trace."
        ),
    )
    parser.add_argument("trace", help="a servetrace trace (OTLP JSON lines) of our server or vLLM's")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a scheduler config change, repeatable (max_num_batched_tokens=4096, max_num_seqs=32, "
                             "enable_chunked_prefill=false, enable_prefix_caching=false, ...)")
    parser.add_argument("--engines", default="vllm,mini", help="comma-separated: vllm, mini, mini-sglang (our scheduler in SGLang's mode), sglang (SGLang 0.5.23's Scheduler, in .venv-sglang)")
    parser.add_argument("--closed-loop-gap-ms", type=float, default=None, metavar="MS",
                        help="a request whose HTTP request began at most MS after another's response ended is that "
                             "client's next turn: released that long after the other's predicted finish, not at its "
                             "traced wall time (default 50; 0: every arrival on the wall clock)")
    parser.add_argument("--arrivals", choices=("queue", "entered"), default="queue",
                        help="under the changed config (under the trace's own, a request enters when it entered, which keeps "
                             "the trace's decisions): queue (default): a request arrives when it reached the engine's queue (its HTTP start "
                             "plus the API server's own delay) and enters at the end of the predicted step it came "
                             "during; entered: when it entered the traced scheduler (which carries the traced steps' "
                             "lengths into the prediction)")
    parser.add_argument("--out", default="whatif-out", help="folder for whatif.json, the step-time model and the "
                        "predicted traces (a run replaces what the previous whatif wrote there)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out that whatif did not write")
    parser.set_defaults(func=run)


def _cell(value: float, unit: str = "") -> str:
    return "-" if value != value else f"{value:.1f}{unit}"  # NaN: no such latency in the run


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tracer.commands._console import stdout_console
    from tracer.replay.from_trace import load_replayable
    from tracer.replay.whatif.closed_loop import DEFAULT_GAP_S, chance, describe
    from tracer.replay.whatif.session import (
        WhatifError, check_engines_available, parse_sets, parse_whatif_engines, run_whatif,
    )

    gap_s = DEFAULT_GAP_S if args.closed_loop_gap_ms is None else args.closed_loop_gap_ms / 1e3
    if gap_s < 0:
        raise WhatifError(f"--closed-loop-gap-ms {args.closed_loop_gap_ms:g}: must be >= 0 (0 turns the inference off)")
    sets = parse_sets(args.sets)
    engines = parse_whatif_engines(args.engines)
    check_engines_available(engines, load_replayable(args.trace))
    console = stdout_console()
    console.print(f"what if {args.trace} ran with {', '.join(f'{k}={v}' for k, v in sets.items()) or 'its own config'} ...")
    result = run_whatif(args.trace, sets, engines, args.out, force=args.force, closed_loop_gap_s=gap_s,
                        arrival_rule=args.arrivals)
    console.print(describe(result.dependencies, len(result.run.requests), gap_s, chance(result.run, gap_s)))
    error = result.model.fit_error
    console.print(f"step-time model on the trace's {error['steps']} steps: mean |error| {error['mean_abs_ms']:.2f} ms "
                  f"per step (median {100 * error['median_rel']:.1f}%), total time {100 * error['total_rel']:+.1f}%; "
                  f"gap between steps {1e3 * result.model.gap_s:.2f} ms")
    console.print(fit_caveats(error))
    table = Table(title="latency (ms from entering the scheduler; predicted clock)")
    table.add_column("metric")
    table.add_column("trace (measured)", justify="right")
    columns = [(f"{p.engine} {p.label}", p.summary) for p in result.predictions]
    for name, _ in columns:
        table.add_column(name, justify="right")
    for metric in ("ttft_ms", "tpot_ms", "itl_ms"):
        for stat in ("mean", "p50", "p90", "p99"):
            table.add_row(f"{metric[:-3].upper()} {stat}", _cell(result.measured[metric][stat]),
                          *[_cell(s[metric][stat]) for _, s in columns])
    table.add_row("throughput tok/s", _cell(result.measured["throughput_tok_s"]),
                  *[_cell(s["throughput_tok_s"]) for _, s in columns])
    console.print(table)
    for p in result.predictions:
        if p.decisions is not None:
            other = "sglang" in p.engine and "sglang" not in (result.run.engine or "")
            verdict = "the trace's own decisions on every step" if p.decisions.agree else (
                f"{p.decisions.agreeing_steps} of {p.decisions.traced_steps} of the trace's steps " + (
                    f"(SGLang's scheduler, not the traced {result.run.engine}'s: its own decisions)" if other else
                    "(arrivals moved by the model's error can change a decision)"))
            console.print(f"{p.engine} under the trace's config reproduces {verdict}")
        if p.log.stalled:
            console.print(f"[yellow]{p.engine} {p.label}: stopped early: {p.log.stalled}[/yellow]")
    for note in result.notes:
        console.print(f"[dim]{note}[/dim]")
    console.print(f"wrote {', '.join(str(p) for p in result.files)}")
    return 0


def fit_caveats(error: dict) -> str:
    """What the fit's own error on the trace does not say: its error on steps it was not fitted on
    (5-fold), and whether the trace's decode batches varied enough to tell the per-step constant
    (the weight read) from the per-request cost; a what-if that changes the batch size leans on it."""
    held_out = error.get("held_out")
    parts = [f"on steps held out of its fit: median {100 * held_out['median_rel']:.1f}%, total "
             f"{100 * held_out['total_rel']:+.1f}%" if held_out else "too few steps to hold any out of its fit"]
    batches = error.get("decode_batches")
    if batches is None:
        parts.append("no decode-only step in the trace: its per-step constant is a guess")
    elif error.get("constant_identified"):
        parts.append(f"decode-only steps of {batches[0]}-{batches[1]} requests tell its per-step constant "
                     "from the per-request cost")
    else:
        parts.append(f"warning: every decode-only step ran {batches[0]}-{batches[1]} requests, so the trace cannot "
                     "tell its per-step constant from the per-request cost; a changed batch size is predicted "
                     "on a guess")
    return "; ".join(parts)

