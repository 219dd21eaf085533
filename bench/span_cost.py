"""What one written span costs the engine thread, in CPU microseconds: this tree vs another revision.

The trace_overhead workload (16 requests x 64 output tokens through LLMEngine.step, traced to an
OTLP/JSON-lines file) run in subprocesses, alternating: one with the tracer of --baseline (a
`git archive` of that revision's engine/ and tracer/), one with each --also revision's (so that a
series of changes is measured in one run, each against the same baseline), one with this working
tree's. Each times,
with time.thread_time (CPU time of the calling thread, so the machine's other load barely moves
it), everything spans.begin / spans.end do on the engine thread (extractors, SDK span creation,
links, the deferred step parts), and the exporter's CPU (an export the hooks ran counted there only);
divided by the spans written.

    .venv/bin/python bench/span_cost.py [--baseline REV] [--also REV ...] [--rounds 3] [--runs 3]

Prints a table and writes bench/results/span_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(tree: str, runs: int, requests: int, max_tokens: int) -> dict:
    """One process: warm-up untraced, then `runs` traced runs with the timers in place."""
    # engine.omp_env.use_passive_omp_wait, written out: importing this tree's engine here would
    # shadow the baseline tree's (and a baseline older than the helper has none).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, tree)
    from _trace_workload import make_engine, prompts, run_once
    from hook_timer.span_timer import SpanTimer
    from tracer.instrument import spans

    assert Path(spans.__file__).resolve().is_relative_to(Path(tree).resolve()), spans.__file__
    engine = make_engine()
    token_ids = [engine.render(p) for p in prompts(requests)]
    run_once(engine, token_ids, max_tokens, None)
    results = []
    with tempfile.TemporaryDirectory(prefix="servetrace-span-cost-") as tmp, SpanTimer(time.thread_time).installed() as spent:
        for run in range(runs):
            spent.reset()
            seconds = run_once(engine, token_ids, max_tokens, Path(tmp) / f"trace-{run}.jsonl")["seconds"]
            results.append({"hooks_s": spent.hooks_s, "export_s": spent.export_cpu_s, "calls": spent.begin_calls,
                            "written": spent.exported_spans, "run_s": seconds})
    return {"runs": results}


def _baseline_tree(rev: str, into: Path) -> str:
    """engine/ and tracer/ of `rev`, unpacked (git archive: no worktree, nothing in .git changes)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "engine", "tracer"],
                             check=True, capture_output=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    tar_path = into / "base.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return str(into)


def _run_worker(tree: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", tree, "--runs", str(args.runs),
               "--requests", str(args.requests), "--max-tokens", str(args.max_tokens)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=tree, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="13519ae", help="the revision to compare with (default: before the lean spans)")
    parser.add_argument("--also", action="append", default=[], metavar="REV",
                        help="another revision measured in the same rounds (repeatable), e.g. each commit of a series")
    parser.add_argument("--rounds", type=int, default=3, help="baseline / current pairs, order alternating")
    parser.add_argument("--runs", type=int, default=3, help="traced runs per process")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.runs, args.requests, args.max_tokens)))
        return 0
    if min(args.rounds, args.runs, args.requests, args.max_tokens) < 1:
        parser.error("--rounds, --runs, --requests and --max-tokens must be at least 1")

    sys.path.insert(0, str(ROOT / "bench"))
    from _results import run_meta, write_results
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)

    def short(revision: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", revision], check=True,
                              capture_output=True, text=True).stdout.strip()

    rev = short(args.baseline)
    also = [short(r) for r in args.also]
    variants = ["baseline", *also, "current"]
    if len(set(variants)) != len(variants):
        parser.error("--also revisions must differ from each other and be other than 'baseline' / 'current'")
    per: dict[str, list[dict]] = {variant: [] for variant in variants}
    loads = []
    with tempfile.TemporaryDirectory(prefix="servetrace-span-cost-base-") as tmp:
        trees = {"baseline": _baseline_tree(rev, Path(tmp) / "baseline"), "current": str(ROOT)}
        for other in also:
            trees[other] = _baseline_tree(other, Path(tmp) / other)
        for round_ in range(args.rounds):
            for variant in variants if round_ % 2 == 0 else variants[::-1]:
                for run in _run_worker(trees[variant], args)["runs"]:
                    per[variant].append(run)
                    console.print(f"  round {round_ + 1} {variant:8s}: {1e6 * run['hooks_s'] / run['written']:6.1f} us hooks "
                                  f"+ {1e6 * run['export_s'] / run['written']:5.1f} us export per written span "
                                  f"({run['written']} spans, {run['calls']} hooked calls, {run['run_s']:.2f} s)")
                loads.append(round(os.getloadavg()[0], 2))

    def figures(runs: list[dict]) -> dict:
        hooks = [1e6 * r["hooks_s"] / r["written"] for r in runs]
        export = [1e6 * r["export_s"] / r["written"] for r in runs]
        return {
            "hooks_us_per_span_median": round(statistics.median(hooks), 1), "hooks_us_per_span_min": round(min(hooks), 1),
            "hooks_us_per_span_max": round(max(hooks), 1), "export_us_per_span_median": round(statistics.median(export), 1),
            "hooks_ms_per_run_median": round(1e3 * statistics.median(r["hooks_s"] for r in runs), 1),
            "hooks_plus_export_ms_per_run_median": round(1e3 * statistics.median(r["hooks_s"] + r["export_s"] for r in runs), 1),
            "spans_per_run": runs[0]["written"], "hooked_calls_per_run": runs[0]["calls"],
            "run_s_median": round(statistics.median(r["run_s"] for r in runs), 3),
        }

    summary = {variant: figures(runs) for variant, runs in per.items()}
    base = summary["baseline"]
    for f in summary.values():
        f["hooks_cut"] = round(1 - f["hooks_us_per_span_median"] / base["hooks_us_per_span_median"], 3)
        f["hooks_plus_export_cut"] = round(1 - f["hooks_plus_export_ms_per_run_median"] / base["hooks_plus_export_ms_per_run_median"], 3)
    cut = summary["current"]["hooks_cut"]
    summary["hooks_cut"] = cut
    columns = ("tracer", "hooks us/span median", "min-max", "export us/span", "hooks ms/run", "hooks + export ms/run",
               "vs baseline", "spans/run", "hooked calls/run")
    table = Table(title=f"Engine-thread CPU per written span (thread_time), {args.rounds} alternating rounds x {args.runs} runs")
    for column in columns:
        table.add_column(column, justify="right")
    rows = []
    labels = {"baseline": f"{rev} (before)", **{other: other for other in also}, "current": "this tree"}
    for variant in variants:
        f = summary[variant]
        row = [labels[variant], f"{f['hooks_us_per_span_median']}", f"{f['hooks_us_per_span_min']}-{f['hooks_us_per_span_max']}",
               f"{f['export_us_per_span_median']}", f"{f['hooks_ms_per_run_median']}", f"{f['hooks_plus_export_ms_per_run_median']}",
               f"{-100 * f['hooks_plus_export_cut']:+.1f}%" if variant != "baseline" else "", str(f["spans_per_run"]),
               str(f["hooked_calls_per_run"])]
        table.add_row(*row)
        rows.append("| " + " | ".join(row) + " |")
    Console().print(table)
    Console().print(f"hooks CPU per written span cut by {100 * cut:.1f}%; 1-minute load after each process: {loads}")
    meta = run_meta(baseline=rev, also=also, loads=loads, workload={"requests": args.requests, "max_tokens": args.max_tokens})
    body = [
        "| " + " | ".join(c.replace("us/", "µs/") for c in columns) + " |",
        "|---|" + "---:|" * (len(columns) - 1), *rows, "",
        f"Engine-thread CPU in spans.begin / spans.end per written span cut by **{100 * cut:.1f}%** "
        f"({summary['baseline']['hooks_us_per_span_median']} -> {summary['current']['hooks_us_per_span_median']} µs, "
        f"medians of {args.rounds * args.runs} runs each). Time.thread_time, so other load on the machine barely "
        f"moves it (1-minute load after each process: {', '.join(map(str, loads))}). An export the hooks ran "
        "themselves (the flush when the engine goes idle) is counted as export only.",
        "",
        f"Workload: {args.requests} requests x {args.max_tokens} output tokens through LLMEngine.step, greedy, "
        "traced to an OTLP/JSON-lines file; each process runs one untraced warm-up, then the timed traced runs; "
        "processes alternate baseline / current.",
    ]
    write_results("span_cost", f"Tracing cost per span on the engine thread: this tree vs {rev}", meta,
                  {"summary": summary, "runs": per}, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
