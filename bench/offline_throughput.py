"""Offline throughput: our engine vs transformers generate() on the same CPU, same prompts.

Both produce exactly max_tokens tokens per request (ignore_eos / min_new_tokens), greedy, from
the bundled SmolLM2-135M in float32. Measured in one process, alternating, best of --repeats,
so the ratio is fair on a noisy shared machine. Prints a table and writes
bench/results/offline_throughput.{json,md}.

    .venv/bin/python bench/offline_throughput.py [--concurrency 8] [--max-tokens 64] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from engine.config import CacheConfig, EngineConfig, SchedulerConfig  # noqa: E402
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402

TOPICS = ["a lighthouse", "the moon", "bread", "rivers", "a violin", "winter", "trains", "bees", "glass", "maps"]
RESULTS = Path(__file__).resolve().parent / "results"


def prompts(n: int) -> list[str]:
    # Different lengths, as a real batch would have.
    return [f"Write a short story about {TOPICS[i % len(TOPICS)]}." + " Make it vivid." * (i % 4) for i in range(n)]


def run_ours(engine: LLMEngine, token_ids: list[list[int]], max_tokens: int) -> tuple[float, int]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    for ids in token_ids:
        engine.add_request(None, ids, params)
    produced = 0
    while engine.has_unfinished_requests():
        produced += sum(len(o.new_token_ids) for o in engine.step())
    return time.perf_counter() - start, produced


def run_transformers(model, tokenizer, token_ids: list[list[int]], max_tokens: int) -> tuple[float, int]:
    # Left padding, one batch: how generate() serves a batch of different lengths.
    width = max(len(ids) for ids in token_ids)
    pad = tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in token_ids])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in token_ids])
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids, attention_mask=mask, do_sample=False, max_new_tokens=max_tokens,
            min_new_tokens=max_tokens, pad_token_id=pad,
        )
    elapsed = time.perf_counter() - start
    return elapsed, (out.shape[1] - width) * len(token_ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    engine = LLMEngine(EngineConfig(cache=CacheConfig(num_blocks=512), scheduler=SchedulerConfig(max_num_seqs=64)))
    directory, name = os.path.split(engine.model_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    rows = []
    for n in args.concurrency:
        token_ids = [engine.render(p) for p in prompts(n)]
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(run_ours(engine, token_ids, args.max_tokens))
            theirs.append(run_transformers(hf_model, engine.tokenizer.hf, token_ids, args.max_tokens))
        (t_ours, n_ours), (t_hf, n_hf) = min(ours), min(theirs)
        rows.append({
            "concurrency": n, "max_tokens": args.max_tokens,
            "prompt_tokens": [len(t) for t in token_ids],
            "ours_s": round(t_ours, 3), "ours_tok_s": round(n_ours / t_ours, 2),
            "transformers_s": round(t_hf, 3), "transformers_tok_s": round(n_hf / t_hf, 2),
            "speedup": round((n_ours / t_ours) / (n_hf / t_hf), 2),
        })
        print(f"concurrency {n}: ours {n_ours / t_ours:.1f} tok/s, transformers {n_hf / t_hf:.1f} tok/s", file=sys.stderr)

    table = Table(title=f"Offline throughput, CPU float32, {args.max_tokens} output tokens/request, best of {args.repeats}")
    for col in ("concurrency", "ours tok/s", "transformers tok/s", "ours / transformers"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["concurrency"]), f"{r['ours_tok_s']:.1f}", f"{r['transformers_tok_s']:.1f}", f"{r['speedup']:.2f}x")
    Console().print(table)

    meta = {
        "command": ".venv/bin/python bench/offline_throughput.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_at_end": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "offline_throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Offline throughput: our engine vs transformers generate()", "",
        f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}; {meta['date']}; load average at end {meta['load_average_at_end']}", "",
        "| concurrency | ours tok/s | transformers tok/s | ours / transformers |", "|---:|---:|---:|---:|",
        *[f"| {r['concurrency']} | {r['ours_tok_s']:.1f} | {r['transformers_tok_s']:.1f} | {r['speedup']:.2f}x |" for r in rows],
        "", "Same prompts, greedy, exactly max_tokens output tokens each; best of the repeats; one process, alternating.",
    ]
    (RESULTS / "offline_throughput.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
