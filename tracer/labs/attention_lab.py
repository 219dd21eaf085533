"""What Triton's CPU interpreter shows of our paged-attention kernels: agreement, not speed.

The kernels (engine/triton_attention.py) run in a child process started with TRITON_INTERPRET=1:
the variable must be set before Triton is first imported (Triton's own @triton.jit helpers, such
as tl.max, are decorated then), and a site build has imported it long before, through vLLM.
Each case builds a paged batch in SmolLM2-135M's attention shape (9 query heads, 3 KV heads,
head_dim 64, 16-token blocks) with every request's blocks scattered over the pool, runs the Triton
path and the torch path (engine/attention.py) on it, and reports the largest difference. Wall time
is the interpreter's: it runs every program instance in Python with NumPy, nothing a GPU would do.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from tracer.labs.registry import Lab, LabResult, Table, environment

REPO = Path(__file__).resolve().parents[2]
HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 9, 3, 64, 16


def _batch(query_lens: list[int], seq_lens: list[int], seed: int):
    """(query, k_cache, v_cache, metadata) with each request's blocks at random places in the pool."""
    import torch

    from engine.attention_metadata import AttentionMetadata

    rng = random.Random(seed)
    blocks = [-(-n // BLOCK_SIZE) for n in seq_lens]
    order = list(range(1, sum(blocks) + 3))  # block 0 stays the null block; two are never referenced
    rng.shuffle(order)
    tables, used = [], 0
    for count in blocks:
        tables.append(order[used : used + count])
        used += count
    width = max(blocks)
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    positions = [p for q, n in zip(query_lens, seq_lens) for p in range(n - q, n)]
    slots = [t[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for q, n, t in zip(query_lens, seq_lens, tables) for p in range(n - q, n)]
    generator = torch.Generator().manual_seed(seed)
    long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    metadata = AttentionMetadata(slot_mapping=long(slots), query_start_loc=long(starts), seq_lens=long(seq_lens),
                                 block_tables=long([t + [0] * (width - len(t)) for t in tables]), positions=long(positions))
    pool = (len(order) + 1, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    return (torch.randn(starts[-1], HEADS, HEAD_DIM, generator=generator), torch.randn(*pool, generator=generator),
            torch.randn(*pool, generator=generator), metadata)


def _rows(decode_context: list[int], splits: list[int]) -> list[list]:
    """The table's rows; runs in the child process, where TRITON_INTERPRET=1 came before Triton."""

    from engine import triton_attention as kernels
    from engine.attention import paged_attention as torch_paged_attention

    scale = HEAD_DIM ** -0.5
    rows = []
    query, k_cache, v_cache, metadata = _batch([1] * len(decode_context), decode_context, seed=0)
    reference = torch_paged_attention(query, k_cache, v_cache, metadata, scale)
    max_tiles = -(-metadata.block_tables.shape[1] * BLOCK_SIZE // kernels.TILE_N)
    for wanted in splits:
        started = time.perf_counter()
        out = kernels.paged_decode_attention(query, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, scale, num_splits=wanted)
        seconds = time.perf_counter() - started
        per_split = -(-max_tiles // max(1, min(wanted, max_tiles)))  # the kernel's own rounding of the split count
        used = -(-max_tiles // per_split)
        programs = len(decode_context) * KV_HEADS * used + (len(decode_context) * HEADS if used > 1 else 0)
        rows.append([f"decode, contexts {'+'.join(map(str, decode_context))}", f"{used} split{'s' if used > 1 else ''}",
                     programs, f"{(out - reference).abs().max().item():.1e}", f"{seconds * 1e3:.0f}"])
    for label, query_lens, seq_lens in (("prefill, 2 prompts of 40 and 23", [40, 23], [40, 23]),
                                        ("prefill chunk of 20 over a 64-token cached prefix, beside a decode", [20, 1], [84, 50])):
        query, k_cache, v_cache, metadata = _batch(query_lens, seq_lens, seed=1)
        reference = torch_paged_attention(query, k_cache, v_cache, metadata, scale)
        started = time.perf_counter()
        out = kernels.paged_prefill_attention(query, k_cache, v_cache, metadata.query_start_loc, metadata.seq_lens,
                                              metadata.block_tables, scale, max(query_lens))
        seconds = time.perf_counter() - started
        programs = len(query_lens) * -(-max(query_lens) // kernels.BLOCK_M) * HEADS
        rows.append([label, "-", programs, f"{(out - reference).abs().max().item():.1e}", f"{seconds * 1e3:.0f}"])
    return rows


def attention_interpreter(decode_context: list[int] = [37, 300], splits: list[int] = [1, 2, 4, 8]) -> LabResult:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-m", "tracer.labs.attention_lab", json.dumps([decode_context, splits])],
                               capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if completed.returncode != 0:
        raise RuntimeError(f"the interpreter run failed: {(completed.stderr or completed.stdout).strip().splitlines()[-1:]}")
    rows = json.loads(completed.stdout.strip().splitlines()[-1])
    table = Table(
        "Our Triton kernels in the CPU interpreter (TRITON_INTERPRET=1) against the torch path, float32",
        ["case", "split-K", "programs launched", "max |Triton - torch|", "interpreter ms"],
        rows,
        f"{HEADS} query heads over {KV_HEADS} KV heads (GQA groups of {HEADS // KV_HEADS}), head_dim {HEAD_DIM}, "
        f"{BLOCK_SIZE}-token blocks scattered over the pool; a decode program serves one KV head's whole group. "
        "A split takes whole 32-key tiles, so a requested split count is rounded (8 requested over 10 tiles run as 5). "
        "Differences are float32 rounding (the split merge reorders the sums). The milliseconds are the "
        "interpreter's: Python and NumPy per program instance on this CPU, nothing a GPU would do.",
    )
    return LabResult("attention-interpreter", "Paged attention in the Triton CPU interpreter", {}, [table], environment=environment())


LABS = [Lab("attention-interpreter", "Paged attention in the Triton CPU interpreter", attention_interpreter,
            {"decode_context": [37, 300], "splits": [1, 2, 4, 8]})]


if __name__ == "__main__":  # the child process attention_interpreter starts
    print(json.dumps(_rows(*json.loads(sys.argv[1]))))
