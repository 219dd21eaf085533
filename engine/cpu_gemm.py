"""Linear layers on the CPU through oneDNN, with each weight packed once, ahead of the first step.

A decode step multiplies a handful of rows (one per request) by every weight matrix. MKL's sgemm,
behind F.linear, is slow at that shape; oneDNN with the weight already reordered into its blocked
layout is 1.5-4x faster there and no slower for prefill-sized inputs (bench/cpu_kernels.py).
Mirrors: vllm.model_executor.layers.utils:dispatch_cpu_unquantized_gemm (vllm 0.33.0)
It sends vLLM's CPU backend to oneDNN (ops.create_onednn_mm / ops.onednn_mm) and drops the original weight the same way.
"""
from __future__ import annotations

import torch
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def onednn_available() -> bool:
    mkldnn = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
    )


class PrepackedLinear(nn.Module):
    """y = x W^T with W held only in oneDNN's packed layout."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # An opaque mkldnn tensor, deliberately not a parameter or buffer: state_dict() and
        # .to() have no meaning for it.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, None, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN prepacked"


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
