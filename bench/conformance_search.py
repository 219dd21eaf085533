"""The long mode of the differential search: thousands of generated cases, mini vs vLLM 0.33
(--pair vllm, the default) or mini-sglang vs SGLang 0.5.23's Scheduler (--pair sglang:
tests/test_conformance_search_sglang.py: --examples for each of its broad, memory-pressure and
priority searches, their counts summed, and each search's own counts in the JSON).

Runs tests/test_conformance_search.py under pytest with SERVETRACE_SEARCH_LONG=1 (random seeds,
hypothesis's example database, --examples cases instead of the CI's fixed derandomized set) and
records what the search reached: how many examples preempted, resumed, hit a full prefix, saw an
arrival while others were preempted, and so on, with the wall time. A disagreement fails the run
and pytest prints the first divergence and the shrunk case; rerunning replays it first from the
database (.hypothesis/), so a fix can be checked with the same command.

    .venv/bin/python bench/conformance_search.py --examples 5000
    .venv/bin/python bench/conformance_search.py --examples 2000 --seed 7   # a reproducible run
    .venv/bin/python bench/conformance_search.py --pair sglang --examples 2000
Results: bench/results/conformance_search.json and .md (conformance_search_sglang.* for --pair sglang).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TESTS = {"vllm": "tests/test_conformance_search.py", "sglang": "tests/test_conformance_search_sglang.py"}
TITLES = {"vllm": ("mini", "vLLM 0.33's Scheduler"), "sglang": ("mini-sglang", "SGLang 0.5.23's Scheduler")}
# The mechanisms reported in the table, in the order a reader checks them; the JSON has all counts.
REPORTED = (
    "preempted", "priority-preempted", "resumed", "arrival-while-preempted", "set-order-requeue", "prefix-hit", "full-prefix-hit",
    "fcfs+caching+preempted", "priority+caching+preempted", "chunked-prefill", "threshold-capped",
    "finished-by-max_model_len", "max_num_seqs=1", "block_size=1", "block_size=64",
)
# The SGLang pair draws no long_prefill_token_threshold (its test says why); vLLM's never preempts in
# a step that admits (priority-preempted) and has no set-order requeue.
UNDRAWN = {"vllm": ("priority-preempted", "set-order-requeue"), "sglang": ("threshold-capped",)}


def read_stats(stats_path: Path) -> dict:
    """The stats the test wrote once every example agreed: one file, or (the SGLang pair) one per
    search, stats.<search>.json, summed."""
    paths = [stats_path] if stats_path.exists() else sorted(stats_path.parent.glob(stats_path.stem + ".*.json"))
    total: dict = {"examples": 0, "counts": {}, "searches": {}}
    for path in paths:
        stats = json.loads(path.read_text())
        if path != stats_path:
            total["searches"][path.suffixes[-2].lstrip(".")] = stats
        total["examples"] += stats["examples"]
        for name, count in stats["counts"].items():
            total["counts"][name] = total["counts"].get(name, 0) + count
    return total


def run_search(examples: int, seed: int | None, pair: str = "vllm") -> tuple[int, float, dict, str]:
    """Run the search test once; (pytest's exit status, wall seconds, stats, output tail)."""
    with tempfile.TemporaryDirectory(prefix="servetrace-search-") as tmp:
        stats_path = Path(tmp) / "stats.json"
        env = dict(os.environ, SERVETRACE_SEARCH_LONG="1", SERVETRACE_SEARCH_EXAMPLES=str(examples),
                   SERVETRACE_SEARCH_STATS=str(stats_path))
        command = [sys.executable, "-m", "pytest", TESTS[pair], "-q", "-p", "no:logging", "--timeout=0"]
        if seed is not None:
            command.append(f"--hypothesis-seed={seed}")
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        stats = read_stats(stats_path)
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-60:])
    return done.returncode, wall, stats, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000, help="generated cases to replay (default 3000)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a random one)")
    parser.add_argument("--pair", choices=sorted(TESTS), default="vllm", help="which scheduler pair (default vllm)")
    parser.add_argument("--no-results", action="store_true", help="print only; write nothing to bench/results")
    args = parser.parse_args(argv)

    status, wall, stats, tail = run_search(args.examples, args.seed, args.pair)
    ours, theirs = TITLES[args.pair]
    if status != 0:
        print(tail)
        print(f"\nthe search failed (pytest exit {status}) after {wall:.1f} s: see the divergence above")
        return 1
    n = stats["examples"]
    counts = stats["counts"]
    rows = [(name, counts.get(name, 0), counts.get(name, 0) / n if n else 0.0) for name in REPORTED
            if name not in UNDRAWN[args.pair]]
    print(f"{n} generated cases, {ours} and {theirs} agree on every step of each; {wall:.1f} s wall")
    for name, count, share in rows:
        print(f"  {name:28} {count:6}  {share:6.1%}")
    if args.no_results:
        return 0

    from bench._results import run_meta, write_results

    searches = stats.get("searches", {})
    per_search = [f" {s} |" for s in searches]

    def cells(name: str) -> str:
        return "".join(f" {v['counts'].get(name, 0)} / {v['examples']} |" for v in searches.values())

    body = [
        f"{n} generated workloads and configs (tests/search_strategies.py), replayed through {ours}",
        f"and {theirs}: all agree on every step"
        + (" (but for the named set-order requeue, counted)" if counts.get("set-order-requeue") else "")
        + f". Wall time {wall:.1f} s (pytest, imports included).", "",
        "| reached | examples | share |" + "".join(per_search), "|---|---:|---:|" + "---:|" * len(searches),
        *[f"| {name} | {count} | {share:.1%} |{cells(name)}" for name, count, share in rows],
    ]
    name = "conformance_search" if args.pair == "vllm" else f"conformance_search_{args.pair}"
    write_results(name, f"Differential search: {ours} vs {theirs}, long mode",
                  run_meta(examples=n, seed=args.seed, pair=args.pair), {"wall_s": round(wall, 1), **stats}, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
