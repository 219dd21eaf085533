"""Linear layers on the CPU through oneDNN, with each weight packed once, ahead of the first step.

A decode step multiplies a handful of rows (one per request) by every weight matrix. MKL's sgemm,
behind F.linear, is slow at that shape; oneDNN with the weight already reordered into its blocked
layout is 1.5-4x faster there and no slower for prefill-sized inputs (bench/cpu_kernels.py).
Mirrors: vllm.model_executor.layers.utils:dispatch_cpu_unquantized_gemm (vllm 0.33.0)
It sends vLLM's CPU backend to oneDNN (ops.create_onednn_mm / ops.onednn_mm) and drops the original weight the same way.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from engine import cpu_small_gemm
from engine.omp_env import omp_waits_passively

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
# CPU features with a native bfloat16 dot product (oneDNN's bf16 kernels run on them).
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on a CPU with AVX-512 BF16 or AMX-BF16: there bfloat16 is the faster default.

    Why it is the default there: half the weight bytes per decode step (the step is memory-bound)
    and oneDNN's bf16 GEMMs: a layer's projections 2.2x, the lm_head 1.6x faster than in float32 at
    8 requests (bench/results/cpu_kernels.md, "bf16 vs fp32"). Read from torch's own CPU
    feature probe where this torch has it, else from /proc/cpuinfo (Linux); False when unknown.
    """
    probe = getattr(torch._C._cpu, "_get_cpu_capability", None)
    if probe is not None:
        try:
            features = probe()
        except RuntimeError:
            features = None
        if isinstance(features, dict):
            return any(features.get(name) for name in NATIVE_BF16_FEATURES)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(name in flags for name in NATIVE_BF16_FEATURES)


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA and on CPUs with native bf16 (cpu_has_native_bf16), float32 elsewhere."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


def onednn_available() -> bool:
    mkldnn = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
    )


class PrepackedLinear(nn.Module):
    """y = x W^T with W held only in oneDNN's packed layout, and for a bf16 weight on a CPU with
    AVX-512 BF16 also in engine/cpu_small_gemm.py's, which computes inputs of a few rows (decode)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # An opaque mkldnn tensor, deliberately not a parameter or buffer: state_dict() and
        # .to() have no meaning for it.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self.small_rows = cpu_small_gemm.SmallGemmWeight(weight) if cpu_small_gemm.SmallGemmWeight.applies_to(weight) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.small_rows is not None:
            out = self.small_rows.matmul(x)
            if out is not None:
                return out
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, None, "none", [], "")

    def extra_repr(self) -> str:
        small = f", rows <= {cpu_small_gemm.MAX_ROWS} in C" if self.small_rows is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN prepacked{small}"


def prepack_linears(model: nn.Module) -> int:
    """Swap every bias-free CPU nn.Linear of model for a PrepackedLinear; returns how many were swapped.

    A tied output projection gets its own packed copy; the embedding keeps the shared weight.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is nn.Linear
                and child.bias is None
                and child.weight.device.type == "cpu"
                and child.weight.dtype in PACKABLE_DTYPES
            ):
                setattr(parent, name, PrepackedLinear(child.weight))
                swapped += 1
    return swapped


# A step of at most this many tokens computes on one thread (compute_threads_for).
SERIAL_STEP_MAX_TOKENS = 4


def serial_step_max_tokens(device: torch.device, passive_wait: bool | None = None) -> int:
    """The most tokens a step may have and still compute on one thread (compute_threads_for's rule
    in this process); 0: every step keeps every thread."""
    passive = omp_waits_passively() if passive_wait is None else passive_wait
    if device.type != "cpu" or torch.get_num_threads() == 1 or not passive:
        return 0
    return SERIAL_STEP_MAX_TOKENS


@contextlib.contextmanager
def compute_threads_for(num_tokens: int, device: torch.device, passive_wait: bool | None = None) -> Iterator[None]:
    """Under passive OpenMP waiting, run a CPU step of at most SERIAL_STEP_MAX_TOKENS tokens on one
    torch thread, then restore. passive_wait None: as this process's libgomp waits (omp_env).

    Speed trick: under OMP_WAIT_POLICY=PASSIVE with no spin (the tests, labs and benches set it:
    libgomp's default spin makes a 2-thread step crawl when other processes share the cores) each of a
    step's ~150 parallel regions ends with the workers asleep, and waking them costs more than a region of a
    few rows computes: a batch-1 decode step at 2 threads was slower than at 1, quiet or loaded
    (bench/results/openmp_policy.md; bench/decode_speed.py, "threads for small steps"). Wider steps keep every
    thread. With a spin before the sleep (libgomp's own, or the bounded one the command line sets,
    omp_env.use_bounded_omp_wait) and one OpenMP pool (omp_env.on_passing_thread) the
    workers are awake between regions and 2 threads are no slower for small steps (batch-1 decode
    11.3 vs 14.0 ms in one A/B process; 15.7 vs 16.2 ms, bench/results/openmp_pools.md): then every
    step keeps every thread. omp_set_num_threads is per calling
    thread, so only this step's thread is affected.
    """
    threads = torch.get_num_threads()
    passive = omp_waits_passively() if passive_wait is None else passive_wait
    if device.type != "cpu" or threads == 1 or not passive or num_tokens > SERIAL_STEP_MAX_TOKENS:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
