"""Where an offline peers item's time goes in our engine (issue 19's offline rows): one LLMEngine, the
peers bench's token ids (bench/_peers_workload.py), each step's model time split by what it ran.

Steps are split into those that carry prefill tokens and decode-only ones; within each, perf_counter
time is summed per component: each projection by its output width (960 qkv, 3072 gate/up, 576 o_proj
and down_proj, 49152 the lm_head on the sampled rows), attention (the C kernels), the KV write,
rotary, RMSNorm, SiLU-and-mul, sampling, input preparation; "(rest)" is what the step ran besides
(the embedding, residual adds, per-layer Python). Decode-only steps are also bucketed by their rows.
The wrappers add ~1 us per call (about 0.4 ms of a 30-layer step). The engine is built and stepped
as bench/_peers_offline_worker.py does (built by serve_bench.build_offline_engine, stepped on a
second thread, libgomp's default wait policy).

    .venv/bin/python bench/offline_profile.py [--threads 1] [--item mixed@32] [--repeats 2]

Results: bench/results/offline_profile.{json,md}.
"""
from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results
import torch
from _peers_workload import draw, items


def install_timers(acc: dict, phase: list[str]) -> None:
    """Wrap the model's components so each call's time adds to acc[(phase, name)]."""
    import engine.cpu_elementwise as elementwise
    import engine.cpu_gemm as gemm
    from engine import model

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            acc[(phase[0], name)] += time.perf_counter() - start
            return out
        return wrapper

    model.paged_attention = timed("attention", model.paged_attention)
    model.write_kv_cache = timed("KV write", model.write_kv_cache)
    model.apply_rotary = timed("rotary", model.apply_rotary)
    elementwise.rms_norm = timed("RMSNorm", elementwise.rms_norm)
    elementwise.add_rms_norm = timed("residual add + RMSNorm", elementwise.add_rms_norm)
    elementwise.rotary_write_kv = timed("rotary + KV write", elementwise.rotary_write_kv)
    elementwise.silu_and_mul = timed("SiLU-and-mul", elementwise.silu_and_mul)
    forward = gemm.PrepackedLinear.forward

    def linear(self, x):
        start = time.perf_counter()
        out = forward(self, x)
        acc[(phase[0], f"linear -> {self.out_features}")] += time.perf_counter() - start
        return out

    gemm.PrepackedLinear.forward = linear


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--item", default="mixed@32", help="workload@concurrency, as in the peers bench")
    parser.add_argument("--repeats", type=int, default=2, help="runs of the item; the fastest is reported")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    args = parser.parse_args()
    workload, _, concurrency = args.item.partition("@")
    if workload not in ("uniform", "mixed") or not concurrency.isdigit():
        parser.error(f"--item must be uniform@N or mixed@N, got {args.item!r}")
    torch.set_num_threads(args.threads)
    from serve_bench import build_offline_engine

    from engine.sampling_params import SamplingParams

    acc: dict = collections.defaultdict(float)
    phase = ["build"]
    install_timers(acc, phase)
    engine_args = ["--max-num-seqs", "64", "--max-model-len", "2048", "--kv-cache-mb", "1024", "--no-prefix-caching"]
    if args.max_num_batched_tokens:
        engine_args += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    engine = build_offline_engine(engine_args)
    runner = engine.model_runner
    steps: list[tuple[str, int, float]] = []

    def timed_method(name, fn):
        def wrapper(*a):
            start = time.perf_counter()
            out = fn(*a)
            acc[(phase[0], name)] += time.perf_counter() - start
            return out
        return wrapper

    runner._sample = timed_method("sampling", runner._sample)
    runner._prepare_inputs = timed_method("input preparation", runner._prepare_inputs)
    execute = runner.execute_model

    def execute_model(scheduler_output, grammar_output=None):
        counts = scheduler_output.num_scheduled_tokens.values()
        phase[0] = "prefill-carrying" if any(n > 1 for n in counts) else "decode-only"
        start = time.perf_counter()
        out = execute(scheduler_output, grammar_output)
        steps.append((phase[0], len(counts), time.perf_counter() - start))
        return out

    runner.execute_model = execute_model
    item = items(draw(), [int(concurrency)], [workload])[0]
    runs: list[dict] = []

    def run() -> None:
        for _ in range(args.repeats):
            acc.clear()
            steps.clear()
            pending = list(zip(item.prompts, item.max_tokens))[::-1]
            in_flight = 0
            start = time.perf_counter()
            while pending or engine.has_unfinished_requests():
                while pending and in_flight < item.concurrency:
                    ids, n = pending.pop()
                    engine.add_request(None, ids, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
                    in_flight += 1
                in_flight -= sum(out.finished for out in engine.step())
            elapsed = time.perf_counter() - start
            runs.append({"elapsed_s": elapsed, "tok_s": item.output_tokens / elapsed,
                         "components": {f"{p}|{n}": v for (p, n), v in acc.items()}, "steps": list(steps)})

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    best = max(runs, key=lambda r: r["tok_s"])
    body = [f"Item {args.item} ({len(item.prompts)} requests, {sum(map(len, item.prompts))} prompt tokens, "
            f"{item.output_tokens} output tokens), {args.threads} thread(s), bf16 default; runs: "
            + ", ".join(f"{r['tok_s']:.1f} tok/s ({r['elapsed_s']:.2f} s)" for r in runs) + "; the fastest below.", ""]
    for kind in ("prefill-carrying", "decode-only"):
        kind_steps = [s for s in best["steps"] if s[0] == kind]
        total = sum(s[2] for s in kind_steps)
        parts = sorted(((v, k.split("|", 1)[1]) for k, v in best["components"].items() if k.startswith(kind + "|")),
                       reverse=True)
        body += [f"## {kind} steps: {len(kind_steps)}, {total:.2f} s of the model's time", "",
                 "| component | s | share |", "|---|---:|---:|"]
        body += [f"| {name} | {v:.3f} | {100 * v / total:.1f}% |" for v, name in parts]
        rest = total - sum(v for v, _ in parts)
        body += [f"| (rest) | {rest:.3f} | {100 * rest / total:.1f}% |", ""]
    buckets: dict[int, list[float]] = collections.defaultdict(list)
    for kind, rows, seconds in best["steps"]:
        if kind == "decode-only":
            buckets[rows // 8 * 8].append(seconds)
    body += ["## decode-only steps by rows", "", "| rows | steps | median ms | s |", "|---|---:|---:|---:|"]
    for low in sorted(buckets):
        times = sorted(buckets[low])
        body.append(f"| {low}-{low + 7} | {len(times)} | {1e3 * times[len(times) // 2]:.1f} | {sum(times):.2f} |")
    print("\n".join(body))
    _results.write_results("offline_profile", f"Where ours spends an offline item ({args.item}, {args.threads} thread(s))",
                           _results.run_meta(), {"item": args.item, "threads": args.threads, "runs": runs}, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
