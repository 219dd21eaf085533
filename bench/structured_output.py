"""Structured output on our engine: compile cost cold and cached, bitmask fill and apply cost per
step, and jump-forward (SGLang's earlier design) against plain constrained decoding on the 20 JSON
schemas of tracer/labs/data/structured_output_schemas.json, greedy, batched.

Also the bitmask fill against the forward pass it overlaps (per step: fill, forward, the time both
ran), and jump-forward both ways: retokenized at the boundary (SGLang 0.4.3.post2's way, the default)
and with the forced string tokenized alone.

Reports forward passes per output (a request's forward passes = the steps that computed its tokens
and sampled for it), the ratio jump-forward saves, tokens/s, and how often the text differs with
jump-forward on (each output is validated against its schema either way). The measurements are
tracer/labs/structured_output_lab.py's (the walkthrough's lab). Writes bench/results/structured_output.{md,json}.

    .venv/bin/python bench/structured_output.py [--repeats 2] [--any-whitespace] [--out-name NAME]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.omp_env import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # before torch loads

from bench._results import run_meta, write_results  # noqa: E402
from engine.config import CacheConfig, EngineConfig, SchedulerConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from tracer.labs.structured_output_lab import MAX_TOKENS, compile_costs, load_schemas, run_workload, summarize, tables, warm_up  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode (the best tokens/s is reported)")
    parser.add_argument("--out-name", default="structured_output",
                        help="results file stem under bench/results/ (keep the committed one on a loaded machine)")
    parser.add_argument("--any-whitespace", action="store_true", help="let the grammar allow whitespace (vLLM's default); default: disable_any_whitespace")
    args = parser.parse_args()
    disable_ws = not args.any_whitespace
    schemas = load_schemas()
    print("loading the engine ...", file=sys.stderr, flush=True)
    engine = LLMEngine(EngineConfig(cache=CacheConfig(num_blocks=512),
                                    scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=2048, max_model_len=512)))
    print("compile costs ...", file=sys.stderr, flush=True)
    costs = compile_costs(engine, schemas, disable_ws)
    warm_up(engine, schemas, disable_ws)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for mode in ("off", "on"):
            print(f"run {repeat + 1}/{args.repeats}, jump-forward {mode} ...", file=sys.stderr, flush=True)
            runs[mode].append(run_workload(engine, schemas, mode == "on", disable_ws))
    print("jump-forward on, the forced string tokenized alone ...", file=sys.stderr, flush=True)
    alone = run_workload(engine, schemas, True, disable_ws, retokenize=False)
    serial = []
    for repeat in range(args.repeats):
        print(f"run {repeat + 1}/{args.repeats}, jump-forward off, the mask filled before the forward (serial) ...",
              file=sys.stderr, flush=True)
        serial.append(run_workload(engine, schemas, False, disable_ws, overlap=False))
    off, on = (max(runs[mode], key=lambda r: r["tokens_per_s"]) for mode in ("off", "on"))
    summary = summarize(costs, off, on, alone, max(serial, key=lambda r: r["tokens_per_s"]))
    meta = run_meta(workload=f"{len(schemas)} JSON schemas, one batch, greedy, max_tokens {MAX_TOKENS}, "
                             f"{'disable_any_whitespace' if disable_ws else 'any whitespace'}", repeats=args.repeats)
    body = [f"Workload: {meta['workload']}; the best of {args.repeats} runs per mode by tokens/s.", ""]
    for table in tables(summary, len(schemas)):
        body += [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns),
                 *["| " + " | ".join(str(c) for c in row) + " |" for row in table.rows], "", table.caption, ""]
    body += ["| schema | off | on (retokenized) | on (string alone) |", "|---|---|---|---|",
             *[f"| {s['name']} | `{a}` | `{b}`{'' if a == b else ' (differs)'} | `{c}`{'' if a == c else ' (differs)'} |"
               for s, a, b, c in zip(schemas, off["texts"], on["texts"], alone["texts"])]]
    write_results(args.out_name, "Structured output: compile, mask, and jump-forward", meta,
                  {"summary": summary, "compile": costs, "runs": runs, "string_alone": alone, "serial": serial}, body)
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
