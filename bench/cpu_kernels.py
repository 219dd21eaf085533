"""CPU kernel choices in the engine's forward pass, each timed against the plain alternative.

The engine makes these choices for speed on the CPU (engine/cpu_gemm.py, engine/model.py,
engine/attention.py). Each is timed here at the bundled SmolLM2-135M's shapes for a decode step
of --batch requests, the chosen form and the alternative alternating in one process, so the
ratio holds on a noisy shared machine:
- every projection through oneDNN with a prepacked weight vs F.linear (MKL sgemm), with q/k/v
  and gate/up stacked into one GEMM each vs separate GEMMs; one prefill-sized row to show
  packing does not cost long inputs;
- KV gather for decode attention: index_select on flat slots vs advanced indexing by [B, L] slots.
Prints a table and writes bench/results/cpu_kernels.{json,md}.

    .venv/bin/python bench/cpu_kernels.py [--batch 8] [--context 96] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from _results import run_meta, write_results  # noqa: E402
from engine.attention import context_slots  # noqa: E402
from engine.cpu_gemm import PrepackedLinear  # noqa: E402
from engine.math_utils import cdiv  # noqa: E402

# SmolLM2-135M
HIDDEN, INTERMEDIATE, VOCAB, HEADS, KV_HEADS, HEAD_DIM, BLOCK = 576, 1536, 49152, 9, 3, 64, 16


def time_us(fn: Callable[[], object], calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def cases(batch: int, context: int) -> list[tuple[str, Callable, Callable, int]]:
    torch.manual_seed(0)
    h = torch.randn(batch, HIDDEN)
    h_long = torch.randn(128, HIDDEN)
    h_mlp = torch.randn(batch, INTERMEDIATE)
    weight = lambda rows, cols=HIDDEN: torch.randn(rows, cols) * 0.02  # noqa: E731
    vocab = weight(VOCAB)
    q_w, k_w, v_w = weight(HEADS * HEAD_DIM), weight(KV_HEADS * HEAD_DIM), weight(KV_HEADS * HEAD_DIM)
    o_w, gate_w, up_w, down_w = weight(HIDDEN, HEADS * HEAD_DIM), weight(INTERMEDIATE), weight(INTERMEDIATE), weight(HIDDEN, INTERMEDIATE)
    packed = {name: PrepackedLinear(w) for name, w in {
        "vocab": vocab, "qkv": torch.cat([q_w, k_w, v_w]), "o": o_w, "gate_up": torch.cat([gate_w, up_w]), "down": down_w,
    }.items()}

    num_blocks = 512
    keys = torch.randn(num_blocks * BLOCK, KV_HEADS, HEAD_DIM)
    values = torch.randn(num_blocks * BLOCK, KV_HEADS, HEAD_DIM)
    tables = torch.stack([torch.randperm(num_blocks - 1)[: cdiv(context, BLOCK)] + 1 for _ in range(batch)])
    slots = context_slots(tables, context, BLOCK)

    return [
        ("lm_head (oneDNN packed vs F.linear)", lambda: packed["vocab"](h), lambda: F.linear(h, vocab), 20),
        ("qkv (packed, stacked vs 3 x F.linear)", lambda: packed["qkv"](h),
         lambda: (F.linear(h, q_w), F.linear(h, k_w), F.linear(h, v_w)), 300),
        ("o_proj (packed vs F.linear)", lambda: packed["o"](h), lambda: F.linear(h, o_w), 300),
        ("gate/up (packed, stacked vs 2 x F.linear)", lambda: packed["gate_up"](h),
         lambda: (F.linear(h, gate_w), F.linear(h, up_w)), 300),
        ("down_proj (packed vs F.linear)", lambda: packed["down"](h_mlp), lambda: F.linear(h_mlp, down_w), 300),
        ("gate/up at 128 rows, prefill", lambda: packed["gate_up"](h_long),
         lambda: (F.linear(h_long, gate_w), F.linear(h_long, up_w)), 50),
        ("KV gather (K and V)",
         lambda: (keys.index_select(0, slots.view(-1)), values.index_select(0, slots.view(-1))),
         lambda: (keys[slots], values[slots]), 1000),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="decode requests in the step")
    parser.add_argument("--context", type=int, default=96, help="longest context in tokens")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds; the median is reported")
    args = parser.parse_args()

    rows = []
    for name, chosen, alternative, calls in cases(args.batch, args.context):
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(time_us(chosen, calls))
            theirs.append(time_us(alternative, calls))
        chosen_us, alternative_us = statistics.median(ours), statistics.median(theirs)
        rows.append({"case": name, "chosen_us": round(chosen_us, 1), "alternative_us": round(alternative_us, 1),
                     "speedup": round(alternative_us / chosen_us, 2)})
        print(f"{name}: {chosen_us:.0f} us vs {alternative_us:.0f} us", file=sys.stderr)

    table = Table(title=f"CPU kernel choices, decode step of {args.batch} requests, context {args.context}, median of {args.repeats}")
    for col in ("case", "chosen (us)", "alternative (us)", "alternative / chosen"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["case"], f"{r['chosen_us']:.0f}", f"{r['alternative_us']:.0f}", f"{r['speedup']:.2f}x")
    Console().print(table)

    body = [
        "| case | chosen (us) | alternative (us) | alternative / chosen |", "|---|---:|---:|---:|",
        *[f"| {r['case']} | {r['chosen_us']:.0f} | {r['alternative_us']:.0f} | {r['speedup']:.2f}x |" for r in rows],
    ]
    write_results("cpu_kernels", "CPU kernel choices: chosen form vs the plain alternative", run_meta(), {"rows": rows}, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
