"""Structured output on our engine: what a grammar costs (compile cold and cached, the bitmask per
step) and what jump-forward saves (forward passes, tokens/s), on the 20 JSON schemas of
tracer/labs/data/structured_output_schemas.json (package data), greedy, in one batch.

bench/structured_output.py runs the same measurements and writes bench/results/structured_output.*;
the lab renders them for walkthroughs/12-structured-output.md. CPU numbers on a shared machine.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from engine.omp_env import use_passive_omp_wait

use_passive_omp_wait()  # before torch loads

from tracer.labs.registry import Lab, LabResult, Table, environment, load_average

# Package data (pyproject's tracer.labs entry): the lab runs from an installed wheel, not only a checkout.
SCHEMAS_FILE = Path(__file__).resolve().parent / "data" / "structured_output_schemas.json"
MAX_TOKENS = 64


def load_schemas() -> list[dict]:
    return json.loads(SCHEMAS_FILE.read_text())["schemas"]


class CallTimer:
    """Wall time of every call of one function, wrapped on its owner for one measurement (the engine is untouched)."""

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


def compile_costs(engine, schemas: list[dict], disable_ws: bool) -> dict:
    """Each schema compiled on a fresh backend (cold), then again on the same one (xgrammar's own cache)."""
    from engine.structured_output import StructuredOutputsParams
    from engine.structured_output.manager import StructuredOutputManager
    from engine.structured_output.params import get_structured_output_key

    manager = StructuredOutputManager(engine.tokenizer.hf, engine.model_config.vocab_size, 1, [engine.eos_token_id])
    start = time.perf_counter()
    backend = manager.backend
    tokenizer_info_s = time.perf_counter() - start
    cold, cached = [], []
    for item in schemas:
        kind, spec = get_structured_output_key(StructuredOutputsParams(json=item["schema"]))
        for bucket in (cold, cached):
            start = time.perf_counter()
            backend.compile(kind, spec, disable_ws)
            bucket.append(time.perf_counter() - start)
    manager.shutdown()
    return {"tokenizer_info_ms": tokenizer_info_s * 1e3, "cold_ms": [c * 1e3 for c in cold], "cached_ms": [c * 1e3 for c in cached]}


def run_workload(engine, schemas: list[dict], jump_forward: bool, disable_ws: bool, max_tokens: int = MAX_TOKENS,
                 retokenize: bool = True, overlap: bool = True) -> dict:
    """One batch of every schema, greedy: texts, validity, forward passes per request, mask costs and
    how the fill overlapped the forward pass. retokenize=False: jump-forward tokenizes the forced
    string alone (the engine's behaviour before SGLang's retokenization was mirrored). overlap=False:
    the mask is filled before the forward pass, on one thread (the baseline of the overlap)."""
    import jsonschema

    from engine.sampling_params import SamplingParams
    from engine.structured_output import StructuredOutputsParams
    from engine.structured_output import apply as grammar_apply

    manager = engine.structured_output_manager
    manager.jump_forward = jump_forward  # the --jump-forward flag, switched on one loaded engine
    manager.retokenize = retokenize
    overlapped_step = engine.overlapped_step
    overlap_times = overlapped_step.times  # the engine's per-step record, emptied for this run
    overlap_times.clear()
    if not overlap:
        engine.overlapped_step = None
    prompts = [engine.render(messages=[{"role": "user", "content": s["prompt"]}]) for s in schemas]
    params = [SamplingParams(temperature=0, max_tokens=max_tokens,
                             structured_outputs=StructuredOutputsParams(json=s["schema"], disable_any_whitespace=disable_ws))
              for s in schemas]
    forward_passes: dict[str, int] = {}

    def on_output(out) -> None:
        if out.new_token_ids:  # a prompt fits one step's budget, so a step with new tokens is one forward pass for it
            forward_passes[out.request_id] = forward_passes.get(out.request_id, 0) + 1

    fill, apply = CallTimer(manager, "grammar_bitmask"), CallTimer(grammar_apply, "apply_grammar_bitmask")
    steps_before = engine.scheduler.current_step
    start = time.perf_counter()
    try:
        outputs = engine.generate(prompts, params, on_output=on_output)
    finally:
        fill.restore()
        apply.restore()
        manager.jump_forward = False
        manager.retokenize = True
        engine.overlapped_step = overlapped_step
    overlapped = list(overlap_times)
    elapsed = time.perf_counter() - start
    valid = []
    for item, out in zip(schemas, outputs):
        try:
            jsonschema.validate(json.loads(out.text), item["schema"])
            valid.append(True)
        except (ValueError, jsonschema.ValidationError):
            valid.append(False)
    tokens = [len(o.output_token_ids) for o in outputs]
    return {
        "texts": [o.text for o in outputs], "valid": valid, "finish_reasons": [o.finish_reason for o in outputs],
        "output_tokens": tokens, "forward_passes": [forward_passes.get(o.request_id, 0) for o in outputs],
        "engine_steps": engine.scheduler.current_step - steps_before, "elapsed_s": elapsed,
        "tokens_per_s": sum(tokens) / elapsed,
        "fill_ms": [c * 1e3 for c in fill.calls], "apply_ms": [c * 1e3 for c in apply.calls],
        "overlap": [{"fill_ms": t.fill_s * 1e3, "forward_ms": t.forward_s * 1e3, "overlap_ms": t.overlap_s * 1e3}
                    for t in overlapped],
    }


def warm_up(engine, schemas: list[dict], disable_ws: bool) -> None:
    """Compile every schema into the engine's cache (and build its TokenizerInfo) with a one-token
    run, so neither measured run pays for compiles the other then reuses."""
    run_workload(engine, schemas, False, disable_ws, max_tokens=1)


def summarize(costs: dict, off: dict, on: dict, alone: dict | None = None, serial: dict | None = None) -> dict:
    median = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    steps = off["overlap"]
    per_token = lambda r: statistics.mean(p / t for p, t in zip(r["forward_passes"], r["output_tokens"]))  # noqa: E731
    passes_off, passes_on = sum(off["forward_passes"]), sum(on["forward_passes"])
    return {
        "compile_cold_ms_median": median(costs["cold_ms"]), "compile_cached_ms_median": median(costs["cached_ms"]),
        "tokenizer_info_ms": costs["tokenizer_info_ms"],
        "fill_ms_per_step_median": median(off["fill_ms"]), "apply_ms_per_step_median": median(off["apply_ms"]),
        "forward_passes_off": passes_off, "forward_passes_on": passes_on,
        "forward_passes_saved_ratio": 1 - passes_on / passes_off,
        "forward_passes_per_output_token_off": per_token(off), "forward_passes_per_output_token_on": per_token(on),
        "tokens_per_s_off": off["tokens_per_s"], "tokens_per_s_on": on["tokens_per_s"],
        "texts_differ": sum(a != b for a, b in zip(off["texts"], on["texts"])),
        "texts_differ_string_alone": (None if alone is None else sum(a != b for a, b in zip(off["texts"], alone["texts"]))),
        "valid_string_alone": None if alone is None else sum(alone["valid"]),
        "overlap_steps": len(steps),
        "overlap_fill_ms_median": median([t["fill_ms"] for t in steps]),
        "overlap_forward_ms_median": median([t["forward_ms"] for t in steps]),
        "overlap_ms_median": median([t["overlap_ms"] for t in steps]),
        "serial_fill_ms_median": None if serial is None else median(serial["fill_ms"]),
        "serial_tokens_per_s": None if serial is None else serial["tokens_per_s"],
        "overlap_fill_hidden_ratio": (sum(t["overlap_ms"] for t in steps) / sum(t["fill_ms"] for t in steps)
                                      if steps and sum(t["fill_ms"] for t in steps) > 0 else float("nan")),
        "valid_off": sum(off["valid"]), "valid_on": sum(on["valid"]),
        "engine_steps_off": off["engine_steps"], "engine_steps_on": on["engine_steps"],
        "output_tokens_off": sum(off["output_tokens"]), "output_tokens_on": sum(on["output_tokens"]),
    }


def tables(summary: dict, n: int) -> list[Table]:
    s = summary
    cost = Table(
        "What a grammar costs on our engine (xgrammar 0.2.8, SmolLM2's 49152-token vocabulary)",
        ["measure", "ms"],
        [["TokenizerInfo for the vocabulary (once per engine)", f"{s['tokenizer_info_ms']:.0f}"],
         [f"compile a JSON schema, cold (median of {n})", f"{s['compile_cold_ms_median']:.2f}"],
         ["compile it again, cached (median)", f"{s['compile_cached_ms_median']:.3f}"],
         [f"bitmask fill per step, {n} structured requests (median)", f"{s['fill_ms_per_step_median']:.2f}"],
         ["bitmask apply per step (median)", f"{s['apply_ms_per_step_median']:.2f}"]],
        "Compile is timed on the compile thread's call into xgrammar; fill is StructuredOutputManager.grammar_bitmask "
        "(scheduler side), apply is apply_grammar_bitmask (model-runner side), both over a whole batched run.",
    )
    jump = Table(
        f"Jump-forward off and on: {n} JSON schemas in one batch, greedy, disable_any_whitespace",
        ["", "jump-forward off", "jump-forward on"],
        [["forward passes (sum over requests)", s["forward_passes_off"], s["forward_passes_on"]],
         ["forward passes per output token (mean)", f"{s['forward_passes_per_output_token_off']:.3f}", f"{s['forward_passes_per_output_token_on']:.3f}"],
         ["engine steps", s["engine_steps_off"], s["engine_steps_on"]],
         ["output tokens", s["output_tokens_off"], s["output_tokens_on"]],
         ["tokens/s", f"{s['tokens_per_s_off']:.1f}", f"{s['tokens_per_s_on']:.1f}"],
         ["outputs valid under their schema", f"{s['valid_off']}/{n}", f"{s['valid_on']}/{n}"],
         ["texts that differ from jump-forward off (retokenized at the boundary, SGLang's way)", "", f"{s['texts_differ']}/{n}"],
         *([["texts that differ from jump-forward off (the forced string tokenized alone)", "",
             f"{s['texts_differ_string_alone']}/{n}"]] if s.get("texts_differ_string_alone") is not None else [])],
        f"Jump-forward saved {s['forward_passes_saved_ratio']:.1%} of the forward passes and changed tokens/s by "
        f"{s['tokens_per_s_on'] / s['tokens_per_s_off'] - 1:+.0%}: the appended tokens are still computed, as one chunk "
        "in the next step (like a prefill), and a step's cost grows with its tokens. Both runs start warm (every "
        "schema compiled and cached by a one-token run first).",
    )
    overlap = Table(
        "The bitmask fill overlapped with the forward pass (jump-forward off, per step with a mask)",
        ["measure", "ms"],
        [[f"bitmask fill on the engine thread (median of {s['overlap_steps']} steps)", f"{s['overlap_fill_ms_median']:.2f}"],
         ["forward pass on the worker thread, to the logits (median)", f"{s['overlap_forward_ms_median']:.2f}"],
         ["time the two ran at once (median)", f"{s['overlap_ms_median']:.2f}"],
         ["share of all fill time hidden under a forward", f"{s['overlap_fill_hidden_ratio']:.0%}"],
         *([["bitmask fill, serial: filled before the forward, one thread (median)", f"{s['serial_fill_ms_median']:.2f}"],
            ["tokens/s, overlapped / serial", f"{s['tokens_per_s_off']:.1f} / {s['serial_tokens_per_s']:.1f}"]]
           if s.get("serial_fill_ms_median") is not None else [])],
        "vLLM 0.33's order (EngineCore.step): the forward starts on a worker thread, the engine thread fills the mask, "
        "sampling waits for it once the logits are ready. Overlap is the wall time both were running (perf_counter); "
        "on a shared 2-core CPU the GIL and the other load decide how much of it is real parallel work.",
    )
    return [cost, jump, overlap]


def structured_output(schemas: int = 20, repeats: int = 1) -> LabResult:
    from tracer.labs.engine_labs import bundled_engine

    load_at_start = load_average()
    engine = bundled_engine()
    items = load_schemas()[:schemas]
    costs = compile_costs(engine, items, True)
    warm_up(engine, items, True)
    runs = {"off": [], "on": []}
    for _ in range(repeats):
        for mode in ("off", "on"):
            runs[mode].append(run_workload(engine, items, mode == "on", True))
    best = {mode: max(rs, key=lambda r: r["tokens_per_s"]) for mode, rs in runs.items()}
    alone = run_workload(engine, items, True, True, retokenize=False)
    serial = run_workload(engine, items, False, True, overlap=False)
    summary = summarize(costs, best["off"], best["on"], alone, serial)
    return LabResult("structured-output", "Structured output: grammar cost and jump-forward", {"schemas": schemas, "repeats": repeats},
                     tables(summary, len(items)), environment=environment(load_at_start))


LABS = [Lab("structured-output", "Structured output: grammar cost and jump-forward", structured_output, {"schemas": 20, "repeats": 1})]


def record_structured_trace(out: Path) -> list[str]:
    """The trace recipe mini-structured-output: two requests under one JSON schema (the second's
    compile hits the cache) and one regex request cut by max_tokens, on our engine, traced."""
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from engine.structured_output import StructuredOutputsParams
    from tracer.instrument import tracing

    schema = next(s for s in load_schemas() if s["name"] == "mixed_types")
    engine = LLMEngine(EngineConfig(cache=CacheConfig(block_size=16, num_blocks=64),
                                    scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256)))
    json_params = SamplingParams(temperature=0, max_tokens=40,
                                 structured_outputs=StructuredOutputsParams(json=schema["schema"], disable_any_whitespace=True))
    with tracing.traced("mini", out / "trace.jsonl", service_name="servetrace-mini"):
        engine.generate([schema["prompt"], "A toy for sale, as JSON"], [json_params, json_params])
        engine.generate(["A serial number:"], SamplingParams(temperature=0, max_tokens=4,
                                                             structured_outputs=StructuredOutputsParams(regex=r"[A-Z]{3}-[0-9]{6}")))
    return [
        "servetrace site trace mini-structured-output --out trace.jsonl",
        "# two requests under one JSON schema (disable_any_whitespace), then a regex request cut off by max_tokens=4;",
        "# greedy, our engine on the bundled model",
    ]
