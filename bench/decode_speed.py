"""Our engine's own speed on this CPU, before and after: batch-1 decode ms/step and offline tokens/s
at 1 / 8 / 32 requests, at 1 and 2 compute threads, and where a decode step's time goes.

Engines, all in one process and measured alternating (so the ratios hold on a noisy shared machine):
this tree at its default dtype (bf16 on CPUs with AVX-512 BF16 / AMX, else fp32) and in float32,
and, with --baseline REF, the engine/ of git REF (imported under another package name) at its own
default and in bfloat16. Each request: --prompt-len prompt tokens, --max-tokens greedy tokens
(ignore_eos); offline tokens/s counts output tokens over the wall time from the first add_request
to the last token (prefill included); batch-1 decode ms/step is the median of one request's decode
steps; best of --repeats. The profile (torch.profiler, this tree's default dtype) groups a few
decode steps' self CPU time by kernel family. Prints tables; writes bench/results/decode_speed.{json,md}.

    .venv/bin/python bench/decode_speed.py [--baseline REF] [--threads 1 2] [--batches 1 8 32] [--max-tokens 32] [--repeats 1]
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.omp_env import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # before torch loads

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from _results import run_meta, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Kernel families for the profile, matched against torch.profiler op names (first match wins).
FAMILIES = (
    ("projections (oneDNN / GEMM)", ("linear", "addmm", "aten::mm", "aten::matmul", "aten::bmm")),
    ("attention (SDPA / softmax)", ("scaled_dot_product", "softmax", "flash_attention")),
    ("KV gather / write", ("index_select", "index_copy", "index")),
    ("sampling (argmax)", ("argmax",)),
)


def prompt(i: int, length: int) -> list[int]:
    return [(1000 + 7 * i + 13 * j) % 40000 + 100 for j in range(length)]


def baseline_package(ref: str) -> str:
    """engine/ as of git ref, extracted and renamed to a package of its own; returns its name."""
    name = "engine_" + re.sub(r"\W", "_", ref)
    where = Path(tempfile.mkdtemp(prefix="decode_speed_"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "engine"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    (where / "engine").rename(where / name)
    for path in (where / name).glob("*.py"):
        text = re.sub(r"\bfrom engine([. ])", rf"from {name}\1", path.read_text())
        path.write_text(re.sub(r"\bimport engine\b", f"import {name}", text))
    sys.path.insert(0, str(where))
    return name


def make_engine(package: str, dtype: str | None, max_seqs: int):
    config = importlib.import_module(f"{package}.config")
    llm_engine = importlib.import_module(f"{package}.llm_engine")
    return llm_engine.LLMEngine(config.EngineConfig(
        model=config.ModelConfig(dtype=dtype),
        cache=config.CacheConfig(num_blocks=max_seqs * 12 + 16),
        scheduler=config.SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=2048, max_model_len=512),
    ))


def add(engine, n: int, prompt_len: int, max_tokens: int, salt: int) -> None:
    params_class = importlib.import_module(f"{type(engine).__module__.split('.')[0]}.sampling_params").SamplingParams
    for i in range(n):
        # A different prompt every run: no prefix-cache hits between runs.
        engine.add_request(None, prompt(salt * 100 + i, prompt_len),
                           params_class(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))


def offline_tok_s(engine, n: int, prompt_len: int, max_tokens: int, salt: int) -> float:
    start = time.perf_counter()
    add(engine, n, prompt_len, max_tokens, salt)
    produced = 0
    while engine.has_unfinished_requests():
        produced += sum(len(o.new_token_ids) for o in engine.step())
    return produced / (time.perf_counter() - start)


def decode_ms(engine, prompt_len: int, max_tokens: int, salt: int) -> tuple[float, float]:
    """(median, fastest) decode step of one request, ms. On a loaded shared machine the fastest
    step is the one least interrupted by other processes: the closer to an idle machine's figure."""
    add(engine, 1, prompt_len, max_tokens, salt)
    engine.step()  # prefill (and the first token)
    times = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, min(times) * 1e3


def profile_decode(engine, batch: int, prompt_len: int, salt: int, steps: int = 5) -> dict[str, float]:
    """ms per decode step by kernel family (self CPU time), the rest as 'other ops + Python'."""
    from torch.profiler import ProfilerActivity, profile

    add(engine, batch, prompt_len, steps + 3, salt)
    engine.step()
    engine.step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    while engine.has_unfinished_requests():
        engine.step()
    shares = {name: 0.0 for name, _ in FAMILIES}
    ops_ms = 0.0
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1e3 / steps
        ops_ms += ms
        for name, needles in FAMILIES:
            if any(n in event.key for n in needles):
                shares[name] += ms
                break
    shares["other torch ops"] = ops_ms - sum(shares.values())
    shares["Python, outside torch ops"] = max(wall_ms - ops_ms, 0.0)
    shares["step wall (profiled)"] = wall_ms
    return {k: round(v, 2) for k, v in shares.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="git ref whose engine/ is measured beside this tree's")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()

    load_start = os.getloadavg()
    max_seqs = max(args.batches)
    engines = {}
    if args.baseline:
        base = baseline_package(args.baseline)
        engines[f"before ({args.baseline}), its default"] = make_engine(base, None, max_seqs)
        engines[f"before ({args.baseline}), bfloat16"] = make_engine(base, "bfloat16", max_seqs)
    engines["after, default"] = make_engine("engine", None, max_seqs)
    engines["after, float32"] = make_engine("engine", "float32", max_seqs)
    label = lambda name, eng: f"{name} = {str(eng.model_runner.dtype).removeprefix('torch.')}"  # noqa: E731
    rows, profiles, salt = [], {}, 0
    for threads in args.threads:
        torch.set_num_threads(threads)
        results = {name: {"engine": label(name, eng), "threads": threads} for name, eng in engines.items()}
        for eng in engines.values():
            salt += 1
            offline_tok_s(eng, 2, args.prompt_len, 4, salt)  # warm up at this thread count
        for _ in range(args.repeats):
            for name, eng in engines.items():
                salt += 1
                median, fastest = (round(x, 1) for x in decode_ms(eng, args.prompt_len, args.max_tokens, salt))
                results[name]["decode_ms_b1"] = min(median, results[name].get("decode_ms_b1", median))
                results[name]["fastest_ms_b1"] = min(fastest, results[name].get("fastest_ms_b1", fastest))
            for batch in args.batches:
                for name, eng in engines.items():
                    salt += 1
                    tok_s = round(offline_tok_s(eng, batch, args.prompt_len, args.max_tokens, salt), 1)
                    results[name][f"tok_s_b{batch}"] = max(tok_s, results[name].get(f"tok_s_b{batch}", tok_s))
        rows += results.values()
        for r in results.values():
            print(r, file=sys.stderr)
        if not args.no_profile:
            for batch in (1, 8):
                salt += 1
                profiles[f"{threads} thread(s), batch {batch}"] = profile_decode(engines["after, default"], batch, args.prompt_len, salt)

    batch_cols = [f"tok_s_b{b}" for b in args.batches]
    table = Table(title=f"our engine, {args.prompt_len} in / {args.max_tokens} out, best of {args.repeats}")
    for col in ("engine", "threads", "batch-1 decode ms/step", "fastest step", *[f"tok/s at {b}" for b in args.batches]):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["engine"], str(r["threads"]), f"{r['decode_ms_b1']:.1f}", f"{r['fastest_ms_b1']:.1f}",
                      *[f"{r[c]:.1f}" for c in batch_cols])
    Console().print(table)

    body = [
        f"{args.prompt_len} prompt tokens, {args.max_tokens} greedy output tokens (ignore_eos) per request; engines measured "
        f"alternating in one process, best of {args.repeats}; load average at start {tuple(round(x, 2) for x in load_start)}.", "",
        "| engine = dtype | threads | batch-1 decode ms/step (median) | fastest step | "
        + " | ".join(f"tok/s at {b}" for b in args.batches) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(args.batches),
        *[f"| {r['engine']} | {r['threads']} | {r['decode_ms_b1']:.1f} | {r['fastest_ms_b1']:.1f} | "
          + " | ".join(f"{r[c]:.1f}" for c in batch_cols) + " |" for r in rows],
        "", "The fastest step is the least interrupted one: on a loaded machine, the closer to an idle machine's figure.",
    ]
    if profiles:
        names = list(next(iter(profiles.values())))
        body += ["", f"Where a decode step's time goes ({label('after, default', engines['after, default'])}; ms per step, "
                 "torch.profiler self CPU time, context ~130 tokens; 'Python, outside torch ops' is the profiled wall time "
                 "less the ops' time, so it also holds the time other processes took the core):", "",
                 "| | " + " | ".join(profiles) + " |", "|---|" + "---:|" * len(profiles),
                 *[f"| {n} | " + " | ".join(f"{p[n]:.2f}" for p in profiles.values()) + " |" for n in names]]
    write_results("decode_speed", "Our engine's decode speed on this CPU, before and after", run_meta(load_average_at_start=load_start),
                  {"rows": rows, "profiles": profiles}, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
