"""The memory-bandwidth floor of a batch-1 decode step: every weight is read once per step (the tied
embedding too, as the lm_head's matmul), so no step can take less than weight bytes / DRAM read
bandwidth. The bandwidth is measured here with plain torch ops on a buffer far larger than the
last-level cache: sum (read only) and copy_ (read + write, both counted)."""
from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path

import torch

BF16_BYTES = 2


def weight_params(safetensors_path: Path) -> int:
    """Parameters in the HF folder's model.safetensors (a tied embedding is stored, and counted, once)."""
    with open(safetensors_path, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def dram_bandwidth(threads: int = 2, gib: float = 1.0, repeats: int = 7) -> dict:
    """Best-of-`repeats` GB/s (1e9 bytes/s) for sum and copy over a `gib` GiB float32 buffer."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        numel = int(gib * 2**30) // 4
        source = torch.ones(numel, dtype=torch.float32)
        target = torch.empty_like(source)
        target.copy_(source)  # touch every page before timing
        sums, copies = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            source.sum()
            sums.append(time.perf_counter() - start)
            start = time.perf_counter()
            target.copy_(source)
            copies.append(time.perf_counter() - start)
        nbytes = numel * 4
        return {"threads": threads, "buffer_gib": gib, "repeats": repeats,
                "sum_read_gb_s": round(nbytes / min(sums) / 1e9, 2),
                "sum_read_gb_s_all": [round(nbytes / s / 1e9, 2) for s in sums],
                "copy_read_write_gb_s": round(2 * nbytes / min(copies) / 1e9, 2)}
    finally:
        torch.set_num_threads(before)


def floor(safetensors_path: Path, threads: int = 2) -> dict:
    params = weight_params(safetensors_path)
    bandwidth = dram_bandwidth(threads)
    weight_bytes = params * BF16_BYTES
    return {"params": params, "bf16_weight_bytes": weight_bytes, "bandwidth": bandwidth,
            "floor_ms_per_step_bf16": round(1000 * weight_bytes / (bandwidth["sum_read_gb_s"] * 1e9), 2),
            "floor_ms_per_step_fp32": round(2000 * weight_bytes / (bandwidth["sum_read_gb_s"] * 1e9), 2)}
