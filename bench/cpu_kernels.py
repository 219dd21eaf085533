"""CPU kernel choices in the engine's forward pass, each timed against the plain alternative.

The engine makes these choices for speed on the CPU (engine/cpu_gemm.py, engine/model.py,
engine/attention.py). Each is timed here at the bundled SmolLM2-135M's shapes for a decode step
of --batch requests, the chosen form and the alternative alternating in one process, so the
ratio holds on a noisy shared machine:
- every projection through oneDNN with a prepacked weight vs F.linear (MKL sgemm), with q/k/v
  and gate/up stacked into one GEMM each vs separate GEMMs; one prefill-sized row to show
  packing does not cost long inputs (float32, the default on CPUs without native bf16);
- bfloat16 (the default on CPUs with AVX-512 BF16 / AMX): one layer's projections and the
  lm_head in bf16 vs float32, both packed; packed bf16 vs F.linear in bf16;
- decode attention over the paged cache: the C kernel (engine/cpu_decode_attention.py) vs the
  torch path it replaces, in bf16 and fp32; within the torch path (the fallback): bf16 computed in
  float32 vs torch's bf16 CPU kernel, KV gathered as whole blocks vs token slots; and, cache-cold
  over 30 layers' pools, the bf16 kernel's task per request (prefetching the next block) vs a task
  per (request, KV head), and that task with vs without its L2 prefetch of the next pass's rows;
- a decode step's bf16 projections (8 and 32 rows), the C small-rows kernel vs oneDNN's packed GEMM,
  over 30 layers' weights in turn;
- prefill attention over the paged cache: the C kernel (engine/cpu_prefill_attention.py), all of a
  step's prefills in one call, vs the torch path (a gather and an SDPA call per request), at a
  2048-token step of whole prompts 16..256 tokens long (the peers bench's mixed set) and at a
  step of chunks after cached context (the masked SDPA path), in bf16 and fp32;
- RMSNorm as F.rms_norm vs the four ops it replaces; RoPE with the sign on sin and one roll vs
  transformers' rotate_half (neg + cat); bf16 RMSNorm and SiLU-and-mul as one C pass each
  (engine/cpu_elementwise.py) vs the torch ops, at a decode step and a 2048-token prefill chunk;
- with --compile, a torch.compile'd decode attention (gather fused into the reductions) vs the
  engine's, with its compile time: measured, not adopted (see the row's note).
Prints a table and writes bench/results/cpu_kernels.{json,md}.

    .venv/bin/python bench/cpu_kernels.py [--batch 8] [--context 96] [--repeats 5] [--threads N] [--compile]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.omp_env import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from _results import run_meta, write_results  # noqa: E402
from engine import attention  # noqa: E402
from engine.attention import context_slots, paged_attention  # noqa: E402
from engine.attention_metadata import AttentionMetadata  # noqa: E402
from engine.cpu_gemm import PrepackedLinear  # noqa: E402
from engine.math_utils import cdiv  # noqa: E402

from _cpu_kernel_elementwise import elementwise_cases, rms_norm_case, rotary_case, rotary_write_kv_case  # noqa: E402
from _model_shape import BLOCK, HEAD_DIM, HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, VOCAB  # noqa: E402


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
        ("KV gather (K and V): index_select on flat slots vs advanced indexing",
         lambda: (keys.index_select(0, slots.view(-1)), values.index_select(0, slots.view(-1))),
         lambda: (keys[slots], values[slots]), 1000),
    ]


def small_gemm_cases() -> list[tuple[str, Callable, Callable, int]]:
    """A decode step's bf16 projections, the C small-rows kernel (engine/cpu_small_gemm.py, what
    PrepackedLinear runs at up to MAX_ROWS rows) vs oneDNN's packed GEMM alone, over 30 layers'
    weights in turn (cache-cold, as a step meets them; the lm_head once), at 8 and 32 rows."""
    from engine import cpu_small_gemm

    if not cpu_small_gemm.available():
        return []
    shapes = {"qkv": (HEADS * HEAD_DIM + 2 * KV_HEADS * HEAD_DIM, HIDDEN), "o_proj": (HIDDEN, HEADS * HEAD_DIM),
              "gate/up": (2 * INTERMEDIATE, HIDDEN), "down_proj": (HIDDEN, INTERMEDIATE), "lm_head": (VOCAB, HIDDEN)}
    gen = torch.Generator().manual_seed(4)
    rows = []
    for name, (n, k) in shapes.items():
        linears = [PrepackedLinear((torch.randn(n, k, generator=gen) * 0.02).bfloat16()) for _ in range(1 if name == "lm_head" else 30)]
        for batch in (8, 32):
            x = torch.randn(batch, k, generator=gen).bfloat16()

            def small(x=x, linears=linears) -> None:
                for linear in linears:
                    linear.small_rows.matmul(x)

            def onednn(x=x, linears=linears) -> None:
                for linear in linears:
                    torch.ops.mkldnn._linear_pointwise(x, linear.packed_weight, None, "none", [], "")

            layers = "the lm_head" if name == "lm_head" else "30 layers' weights in turn"
            rows.append((f"linear (bf16), decode rows: {name} {n}x{k} at {batch} rows, {layers}: C small-rows kernel vs "
                         "oneDNN packed", small, onednn, 20))
    return rows


def bf16_cases(batch: int) -> list[tuple[str, Callable, Callable, int]]:
    """The bf16 default: one decoder layer's four projections and the lm_head, bf16 vs fp32."""
    torch.manual_seed(0)
    shapes = {"qkv": (HEADS * HEAD_DIM + 2 * KV_HEADS * HEAD_DIM, HIDDEN), "o": (HIDDEN, HEADS * HEAD_DIM),
              "gate_up": (2 * INTERMEDIATE, HIDDEN), "down": (HIDDEN, INTERMEDIATE)}
    weights = {name: torch.randn(*shape) * 0.02 for name, shape in shapes.items()}
    vocab = torch.randn(VOCAB, HIDDEN) * 0.02
    packed = {dt: {name: PrepackedLinear(w.to(dt)) for name, w in weights.items()} for dt in (torch.float32, torch.bfloat16)}
    lm_head = {dt: PrepackedLinear(vocab.to(dt)) for dt in (torch.float32, torch.bfloat16)}
    inputs = {dt: {name: torch.randn(batch, shape[1]).to(dt) for name, shape in shapes.items()} for dt in packed}
    h = {dt: torch.randn(batch, HIDDEN).to(dt) for dt in packed}
    layer = lambda dt: [packed[dt][n](inputs[dt][n]) for n in shapes]  # noqa: E731
    gate_up_bf16 = weights["gate_up"].bfloat16()
    return [
        ("one layer's 4 projections: bf16 vs fp32 (both packed)", lambda: layer(torch.bfloat16), lambda: layer(torch.float32), 200),
        ("lm_head: bf16 vs fp32 (both packed)", lambda: lm_head[torch.bfloat16](h[torch.bfloat16]),
         lambda: lm_head[torch.float32](h[torch.float32]), 20),
        ("gate/up in bf16: PrepackedLinear vs F.linear", lambda: packed[torch.bfloat16]["gate_up"](inputs[torch.bfloat16]["gate_up"]),
         lambda: F.linear(inputs[torch.bfloat16]["gate_up"], gate_up_bf16), 200),
    ]


def decode_batch(batch: int, context: int, dtype: torch.dtype, num_blocks: int = 512):
    """A decode-only step's query, paged K/V pool and metadata (contexts context/2..context, scattered blocks)."""
    gen = torch.Generator().manual_seed(1)
    k_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    seq_lens = torch.randint(context // 2, context + 1, (batch,), generator=gen)
    seq_lens[0] = context
    tables = torch.stack([torch.randperm(num_blocks - 1, generator=gen)[: cdiv(context, BLOCK)] + 1 for _ in range(batch)])
    metadata = AttentionMetadata(
        slot_mapping=torch.zeros(batch, dtype=torch.long), query_start_loc=torch.arange(batch + 1), seq_lens=seq_lens,
        block_tables=tables, positions=seq_lens - 1,
    )
    return torch.randn(batch, HEADS, HEAD_DIM, generator=gen).to(dtype), k_cache, v_cache, metadata


def slot_gather_attention(query, k_cache, v_cache, metadata, compute_dtype):
    """The plain form: gather token slots [B, L], SDPA in compute_dtype with an additive mask."""
    batch, length = query.shape[0], int(metadata.seq_lens.max())
    slots = context_slots(metadata.block_tables, length, BLOCK).view(-1)
    flat = (BLOCK * k_cache.shape[0], KV_HEADS, HEAD_DIM)
    key = k_cache.view(flat).index_select(0, slots).view(batch, length, KV_HEADS, HEAD_DIM).transpose(1, 2)
    value = v_cache.view(flat).index_select(0, slots).view(batch, length, KV_HEADS, HEAD_DIM).transpose(1, 2)
    beyond = torch.arange(length)[None, :] >= metadata.seq_lens[:, None]
    mask = torch.zeros(beyond.shape, dtype=compute_dtype).masked_fill_(beyond, float("-inf"))[:, None, None, :]
    out = F.scaled_dot_product_attention(query.unsqueeze(2).to(compute_dtype), key.to(compute_dtype), value.to(compute_dtype),
                                         attn_mask=mask, scale=HEAD_DIM**-0.5, enable_gqa=True)
    return out.squeeze(2).to(query.dtype)


def torch_path_attention(query, k_cache, v_cache, metadata):
    """engine/attention.py's decode path with the C kernel switched off (gather, upcast, SDPA)."""
    kernel = attention.cpu_decode_attention.decode_attention
    attention.cpu_decode_attention.decode_attention = lambda *args: None
    try:
        return paged_attention(query, k_cache, v_cache, metadata, HEAD_DIM**-0.5)
    finally:
        attention.cpu_decode_attention.decode_attention = kernel


def attention_cases(batch: int, context: int) -> list[tuple[str, Callable, Callable, int]]:
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        query, k_cache, v_cache, metadata = decode_batch(batch, context, dtype)
        paged_attention(query, k_cache, v_cache, metadata, HEAD_DIM**-0.5)
        rows.append((f"decode attention ({str(dtype).removeprefix('torch.')}): C kernel vs the torch path (gather, upcast, SDPA)",
                     lambda q=query, k=k_cache, v=v_cache, m=metadata: paged_attention(q, k, v, m, HEAD_DIM**-0.5),
                     lambda q=query, k=k_cache, v=v_cache, m=metadata: torch_path_attention(q, k, v, m), 200))
    for dtype, alternative, what in (
        (torch.bfloat16, torch.bfloat16, "bf16 decode attention: computed in fp32 vs torch's bf16 kernel"),
        (torch.float32, torch.float32, "fp32 decode attention: whole-block gather vs token-slot gather"),
    ):
        query, k_cache, v_cache, metadata = decode_batch(batch, context, dtype)
        paged_attention(query, k_cache, v_cache, metadata, HEAD_DIM**-0.5)  # the plan, once per step as in the engine
        rows.append((what, lambda q=query, k=k_cache, v=v_cache, m=metadata: torch_path_attention(q, k, v, m),
                     lambda q=query, k=k_cache, v=v_cache, m=metadata, a=alternative: slot_gather_attention(q, k, v, m, a), 200))
    return rows


def cold_decode_cases() -> list[tuple[str, Callable, Callable, int]]:
    """The bf16 decode kernel's task per request vs per (request, KV head), cache-cold as a step meets
    the pools: one call per layer over 30 layers' pools (each bigger than a core's cache), at the
    peers bench's uniform@8 and mixed@32 shapes (8 requests of ~190 tokens, 32 of ~173)."""
    from engine import cpu_decode_attention

    rows = []
    for batch, context in ((8, 190), (32, 173)):
        gen = torch.Generator().manual_seed(3)
        num_blocks = 4096
        pools = [tuple(torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(torch.bfloat16) for _ in range(2))
                 for _ in range(30)]
        width = cdiv(context + 40, BLOCK)
        tables = (torch.randperm(num_blocks - 1, generator=gen)[: batch * width] + 1).view(batch, width)
        lens = torch.randint(context - 40, context + 40, (batch,), generator=gen)
        query = torch.randn(batch, HEADS, HEAD_DIM, generator=gen).to(torch.bfloat16)

        def step(per_head: bool, q=query, pools=pools, t=tables, n=lens) -> None:
            for k_cache, v_cache in pools:
                cpu_decode_attention.decode_attention(q, k_cache, v_cache, t, n, HEAD_DIM**-0.5, per_head_tasks=per_head)

        def request_task(far_prefetch: bool, q=query, pools=pools, t=tables, n=lens) -> None:
            for k_cache, v_cache in pools:
                cpu_decode_attention.decode_attention(q, k_cache, v_cache, t, n, HEAD_DIM**-0.5, far_prefetch=far_prefetch)

        rows.append((f"decode attention: a task per request vs per (request, KV head), bf16, {batch} requests of ~{context} "
                     "tokens, 30 layers' pools in turn (cache-cold)", lambda s=step: s(False), lambda s=step: s(True), 5))
        rows.append((f"decode attention, a task per request: with vs without the L2 prefetch of the next pass's rows, bf16, "
                     f"{batch} requests of ~{context} tokens, 30 layers' pools in turn (cache-cold)",
                     lambda s=request_task: s(True), lambda s=request_task: s(False), 5))
    return rows


def prefill_step(requests: list[tuple[int, int]], dtype: torch.dtype):
    """(cached, new) tokens per request, all in the pool (scattered blocks): query, pool, metadata."""
    gen = torch.Generator().manual_seed(2)
    lengths = [cached + new for cached, new in requests]
    num_blocks = sum(cdiv(n, BLOCK) for n in lengths) + 1
    free = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    tables = [[free.pop() for _ in range(cdiv(n, BLOCK))] for n in lengths]
    width = max(map(len, tables))
    k_cache, v_cache = (torch.randn(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(dtype) for _ in range(2))
    starts = torch.tensor([0] + [new for _, new in requests]).cumsum(0)
    positions = torch.cat([torch.arange(cached, cached + new) for cached, new in requests])
    metadata = lambda: AttentionMetadata(  # noqa: E731  (a fresh one per call: the plan is part of the step)
        slot_mapping=torch.zeros(len(positions), dtype=torch.long), query_start_loc=starts, seq_lens=torch.tensor(lengths),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]), positions=positions)
    return torch.randn(len(positions), HEADS, HEAD_DIM, generator=gen).to(dtype), k_cache, v_cache, metadata


def prefill_cases() -> list[tuple[str, Callable, Callable, int]]:
    def torch_path(q, k, v, metadata):
        kernel = attention.cpu_prefill_attention.prefill_attention
        attention.cpu_prefill_attention.prefill_attention = lambda *args: False
        try:
            return paged_attention(q, k, v, metadata(), HEAD_DIM**-0.5)
        finally:
            attention.cpu_prefill_attention.prefill_attention = kernel

    gen = torch.Generator().manual_seed(0)
    prompts, total = [], 0
    while total < 2048:  # whole prompts of 16..256 tokens, the last cut to fit a 2048-token step
        n = min(int(torch.randint(16, 257, (1,), generator=gen)), 2048 - total)
        prompts.append((0, n))
        total += n
    chunks = [(256, 128), (512, 256), (100, 64)]  # continued prefills after cached context
    rows = []
    for label, requests in (("2048-token step of whole prompts", prompts), ("chunks after cached context", chunks)):
        for dtype in (torch.bfloat16, torch.float32):
            q, k, v, metadata = prefill_step(requests, dtype)
            rows.append((f"prefill attention ({str(dtype).removeprefix('torch.')}), {label}: C kernel vs a gather + SDPA per request",
                         lambda q=q, k=k, v=v, m=metadata: paged_attention(q, k, v, m(), HEAD_DIM**-0.5),
                         lambda q=q, k=k, v=v, m=metadata: torch_path(q, k, v, m), 3))
    return rows


def compiled_attention_case(batch: int, context: int) -> tuple[str, Callable, Callable, int]:
    """Not adopted: inductor fuses the block gather into the two reductions (no gathered copy), but
    compiles for tens of seconds on the first call of every process (every engine start)."""
    query, k_cache, v_cache, metadata = decode_batch(batch, context, torch.bfloat16)
    width = cdiv(context, BLOCK)
    beyond = torch.arange(width * BLOCK)[None, :] >= metadata.seq_lens[:, None]
    mask = torch.zeros(beyond.shape).masked_fill_(beyond, float("-inf"))
    blocks = metadata.block_tables[:, :width]

    def fused(q, kc, vc, blocks, mask):
        b, length, group = q.shape[0], blocks.shape[1] * BLOCK, HEADS // KV_HEADS
        k = kc[blocks].view(b, length, KV_HEADS, 1, HEAD_DIM).float()
        v = vc[blocks].view(b, length, KV_HEADS, 1, HEAD_DIM).float()
        scores = (q.view(b, 1, KV_HEADS, group, HEAD_DIM).float() * k).sum(-1) * HEAD_DIM**-0.5 + mask.view(b, length, 1, 1)
        return (scores.softmax(dim=1)[..., None] * v).sum(1).reshape(b, HEADS, HEAD_DIM).to(q.dtype)

    compiled = torch.compile(fused, dynamic=True)
    start = time.perf_counter()
    compiled(query, k_cache, v_cache, blocks, mask)
    seconds = time.perf_counter() - start
    paged_attention(query, k_cache, v_cache, metadata, HEAD_DIM**-0.5)
    return (f"bf16 decode attention: torch.compile'd fused gather vs the engine's (NOT adopted: {seconds:.0f} s first compile)",
            lambda: compiled(query, k_cache, v_cache, blocks, mask),
            lambda: paged_attention(query, k_cache, v_cache, metadata, HEAD_DIM**-0.5), 200)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="decode requests in the step")
    parser.add_argument("--context", type=int, default=96, help="longest context in tokens")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd decode attention (compiles ~1 min)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    all_cases = cases(args.batch, args.context) + bf16_cases(args.batch) + attention_cases(args.batch, args.context)
    all_cases += cold_decode_cases()
    all_cases += small_gemm_cases()
    all_cases += prefill_cases()
    all_cases.append(rms_norm_case(args.batch))
    all_cases.append(rotary_case(args.batch))
    all_cases.append(rotary_write_kv_case(args.batch))
    all_cases += elementwise_cases(args.batch)
    if args.compile:
        all_cases.append(compiled_attention_case(args.batch, args.context))
    rows = []
    for name, chosen, alternative, calls in all_cases:
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
