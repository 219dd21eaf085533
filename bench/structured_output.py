"""Structured output on our engine: compile cost cold and cached, bitmask fill and apply cost per
step, and jump-forward (SGLang's earlier design) against plain constrained decoding on the 20 JSON
schemas of tests/data/structured_output_schemas.json, greedy, batched.

Reports forward passes per output (a request's forward passes = the steps that computed its tokens
and sampled for it), the ratio jump-forward saves, tokens/s, and how often the text differs with
jump-forward on (each output is validated against its schema either way). Writes
bench/results/structured_output.{md,json}.

    .venv/bin/python bench/structured_output.py [--repeats 2] [--any-whitespace]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jsonschema  # noqa: E402

from bench._results import run_meta, write_results  # noqa: E402
from engine.config import CacheConfig, EngineConfig, SchedulerConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402
from engine.structured_output import StructuredOutputsParams  # noqa: E402
from engine.structured_output import apply as grammar_apply  # noqa: E402
from engine.structured_output.manager import StructuredOutputManager  # noqa: E402
from engine.structured_output.params import get_structured_output_key  # noqa: E402

SCHEMAS = json.loads((Path(__file__).resolve().parents[1] / "tests" / "data" / "structured_output_schemas.json").read_text())["schemas"]
MAX_TOKENS = 64


class Timer:
    """Wall time of every call of one function (the bench's own meter; the engine is untouched)."""

    def __init__(self, owner: object, name: str) -> None:
        self.owner, self.name, self.calls = owner, name, []
        self.original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.calls.append(time.perf_counter() - start)

        setattr(owner, name, timed)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.original)


def compile_costs(engine: LLMEngine, disable_ws: bool) -> dict:
    """Each schema compiled on a fresh backend (cold), then again on the same one (xgrammar's cache)."""
    manager = StructuredOutputManager(engine.tokenizer.hf, engine.model_config.vocab_size, 1, [engine.eos_token_id])
    start = time.perf_counter()
    backend = manager.backend
    tokenizer_info_s = time.perf_counter() - start
    cold, cached = [], []
    for item in SCHEMAS:
        kind, spec = get_structured_output_key(StructuredOutputsParams(json=item["schema"]))
        for bucket in (cold, cached):
            start = time.perf_counter()
            backend.compile(kind, spec, disable_ws)
            bucket.append(time.perf_counter() - start)
    manager.shutdown()
    return {"tokenizer_info_ms": tokenizer_info_s * 1e3, "cold_ms": [c * 1e3 for c in cold], "cached_ms": [c * 1e3 for c in cached]}


def run_workload(engine: LLMEngine, jump_forward: bool, disable_ws: bool) -> dict:
    manager = engine.structured_output_manager
    manager.jump_forward = jump_forward  # the --jump-forward flag, switched on one loaded engine
    prompts = [engine.render(messages=[{"role": "user", "content": s["prompt"]}]) for s in SCHEMAS]
    params = [SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                             structured_outputs=StructuredOutputsParams(json=s["schema"], disable_any_whitespace=disable_ws))
              for s in SCHEMAS]
    forward_passes: dict[str, int] = {}

    def on_output(out) -> None:
        if out.new_token_ids:  # each prompt fits one step's budget, so a step with new tokens is one forward pass for it
            forward_passes[out.request_id] = forward_passes.get(out.request_id, 0) + 1

    fill, apply = Timer(manager, "grammar_bitmask"), Timer(grammar_apply, "apply_grammar_bitmask")
    steps_before = engine.scheduler.current_step
    start = time.perf_counter()
    try:
        outputs = engine.generate(prompts, params, on_output=on_output)
    finally:
        fill.restore()
        apply.restore()
        manager.jump_forward = False
    elapsed = time.perf_counter() - start
    valid = []
    for item, out in zip(SCHEMAS, outputs):
        try:
            jsonschema.validate(json.loads(out.text), item["schema"])
            valid.append(True)
        except (ValueError, jsonschema.ValidationError):
            valid.append(False)
    tokens = [len(o.output_token_ids) for o in outputs]
    return {
        "texts": [o.text for o in outputs],
        "valid": valid,
        "finish_reasons": [o.finish_reason for o in outputs],
        "output_tokens": tokens,
        "forward_passes": [forward_passes.get(o.request_id, 0) for o in outputs],
        "engine_steps": engine.scheduler.current_step - steps_before,
        "elapsed_s": elapsed,
        "tokens_per_s": sum(tokens) / elapsed,
        "fill_ms": [c * 1e3 for c in fill.calls],
        "apply_ms": [c * 1e3 for c in apply.calls],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode (the best tokens/s is reported)")
    parser.add_argument("--any-whitespace", action="store_true", help="let the grammar allow whitespace (vLLM's default); default: disable_any_whitespace")
    args = parser.parse_args()
    disable_ws = not args.any_whitespace
    print("loading the engine ...", file=sys.stderr, flush=True)
    engine = LLMEngine(EngineConfig(cache=CacheConfig(num_blocks=512),
                                    scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=2048, max_model_len=512)))
    print("compile costs ...", file=sys.stderr, flush=True)
    costs = compile_costs(engine, disable_ws)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for mode in ("off", "on"):
            print(f"run {repeat + 1}/{args.repeats}, jump-forward {mode} ...", file=sys.stderr, flush=True)
            runs[mode].append(run_workload(engine, mode == "on", disable_ws))
    best = {mode: max(rs, key=lambda r: r["tokens_per_s"]) for mode, rs in runs.items()}
    off, on = best["off"], best["on"]
    passes_off, passes_on = sum(off["forward_passes"]), sum(on["forward_passes"])
    differs = sum(a != b for a, b in zip(off["texts"], on["texts"]))
    per_output = lambda r: statistics.mean(p / t for p, t in zip(r["forward_passes"], r["output_tokens"]))  # noqa: E731
    median = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    summary = {
        "compile_cold_ms_median": median(costs["cold_ms"]), "compile_cached_ms_median": median(costs["cached_ms"]),
        "tokenizer_info_ms": costs["tokenizer_info_ms"],
        "fill_ms_per_step_median": median(off["fill_ms"]), "apply_ms_per_step_median": median(off["apply_ms"]),
        "forward_passes_off": passes_off, "forward_passes_on": passes_on,
        "forward_passes_saved_ratio": 1 - passes_on / passes_off,
        "forward_passes_per_output_token_off": per_output(off), "forward_passes_per_output_token_on": per_output(on),
        "tokens_per_s_off": off["tokens_per_s"], "tokens_per_s_on": on["tokens_per_s"],
        "texts_differ": differs, "valid_off": sum(off["valid"]), "valid_on": sum(on["valid"]),
        "engine_steps_off": off["engine_steps"], "engine_steps_on": on["engine_steps"],
    }
    meta = run_meta(workload=f"{len(SCHEMAS)} JSON schemas, one batch, greedy, max_tokens {MAX_TOKENS}, "
                             f"{'disable_any_whitespace' if disable_ws else 'any whitespace'}", repeats=args.repeats)
    body = [
        f"Workload: {meta['workload']}; the best of {args.repeats} runs per mode by tokens/s.", "",
        "| measure | value |", "|---|---|",
        f"| xgrammar TokenizerInfo for the 49152-token vocabulary (once per engine) | {costs['tokenizer_info_ms']:.0f} ms |",
        f"| compile, cold (median of {len(SCHEMAS)}) | {summary['compile_cold_ms_median']:.2f} ms |",
        f"| compile, cached (median) | {summary['compile_cached_ms_median']:.3f} ms |",
        f"| bitmask fill per step, batch of {len(SCHEMAS)} (median) | {summary['fill_ms_per_step_median']:.2f} ms |",
        f"| bitmask apply per step (median) | {summary['apply_ms_per_step_median']:.2f} ms |",
        "", "| | jump-forward off | jump-forward on |", "|---|---|---|",
        f"| forward passes (sum over requests) | {passes_off} | {passes_on} |",
        f"| forward passes per output token (mean) | {per_output(off):.3f} | {per_output(on):.3f} |",
        f"| engine steps | {off['engine_steps']} | {on['engine_steps']} |",
        f"| output tokens | {sum(off['output_tokens'])} | {sum(on['output_tokens'])} |",
        f"| tokens/s | {off['tokens_per_s']:.1f} | {on['tokens_per_s']:.1f} |",
        f"| outputs valid under their schema | {sum(off['valid'])}/{len(SCHEMAS)} | {sum(on['valid'])}/{len(SCHEMAS)} |",
        "",
        f"Jump-forward saves {summary['forward_passes_saved_ratio']:.1%} of the forward passes; "
        f"{differs} of {len(SCHEMAS)} texts differ from the output without it.",
        "", "| schema | off | on |", "|---|---|---|",
        *[f"| {s['name']} | `{a}` | `{b}`{'' if a == b else ' (differs)'} |" for s, a, b in zip(SCHEMAS, off["texts"], on["texts"])],
    ]
    write_results("structured_output", "Structured output: compile, mask, and jump-forward", meta,
                  {"summary": summary, "compile": costs, "runs": runs}, body)
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
