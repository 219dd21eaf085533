"""STAND-IN for the ``sgl_kernel`` CPU kernel package: NOT the real kernel.

What it is
    A plain-torch implementation of exactly one op, ``assign_req_to_token_pool_cpu``, under the
    import name ``sgl_kernel``. It is installed by ``scripts/setup-sglang.sh`` into servetrace's
    live-test venv ``.venv-sglang`` only (distribution ``servetrace-sgl-kernel-cpu-standin``).

Why
    SGLang 0.5.23's CPU engine (``SGLANG_USE_CPU_ENGINE=1 ... --device cpu``) imports CPU ops from
    ``sgl_kernel``, but no package registry ships that CPU kernel: it is built from source only
    (the ``sglang-kernel`` wheels are CUDA builds). With ``--attention-backend torch_native`` on a
    CPU without AMX, the only such op a run CALLS is this one, imported at module level:

        sglang/srt/mem_cache/allocation.py:45-46
            if _is_cpu:
                from sgl_kernel import assign_req_to_token_pool_cpu
        called from ``assign_req_to_token_pool_func`` (allocation.py:737, call at :746) as
            assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset,
                                         end_offset, out_cache_loc, req_to_token.shape[1])

    It is reached as a plain module attribute (``from sgl_kernel import ...``), not through
    ``torch.ops.sgl_kernel``: the ``torch.ops.sgl_kernel.*`` ops of SGLang's CPU path are used
    only when ``cpu_has_amx_support()`` is true (sglang/srt/utils/common.py:371), which needs
    an AMX CPU and ``torch.ops.sgl_kernel.convert_weight_packed``; this stand-in registers no
    torch op, so those paths stay off and SGLang takes its native torch fallbacks.

Anything else raises
    SGLang's CPU path also imports other ops at module level without calling them in such a run
    (e.g. ``from sgl_kernel import copy_all_layer_kv_cache_cpu`` in
    sglang/kernels/ops/kvcache/cache_move.py:9-10). So any other public name resolves to a
    placeholder function that raises ``NotImplementedError`` naming the op when it is CALLED:
    nothing is ever computed by a fake kernel, and a run that does reach another op fails loudly
    with the op's name. Dunder names raise AttributeError as usual. Submodules such as
    ``sgl_kernel.mamba`` do not exist (ModuleNotFoundError).
"""

from __future__ import annotations

import torch

__all__ = ["assign_req_to_token_pool_cpu", "STANDIN"]

#: Marker for tools (and people) that need to tell this stand-in from the real kernel.
STANDIN = True


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Write each request's new KV slots into its row of the req->token table, in place.

    Same contract as the Triton kernel ``assign_req_to_token_pool`` in
    sglang/srt/mem_cache/allocation.py: for request ``i`` (in batch order), the slots
    ``out_cache_loc[sum(end - start of requests < i) : ... + (end_i - start_i)]`` are stored at
    ``req_to_token[req_pool_indices[i], start_offset[i]:end_offset[i]]``.
    ``pool_len`` is ``req_to_token.shape[1]`` (the row length); offsets past it are an error.
    """
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    load = 0
    for row, start, end in zip(rows, starts, ends):
        n = end - start
        if n > 0:
            if end > pool_len:
                raise ValueError(
                    f"assign_req_to_token_pool_cpu (stand-in): end offset {end} "
                    f"past the row length {pool_len}"
                )
            req_to_token[row, start:end] = out_cache_loc[load : load + n].to(req_to_token.dtype)
        load += n  # as the Triton kernel: the load offset is the sum of (end - start) before it


def _missing_op(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name}: not implemented by servetrace's sgl_kernel CPU STAND-IN "
            "(scripts/sgl_kernel_cpu_standin), which implements only assign_req_to_token_pool_cpu. "
            "This SGLang run called a CPU kernel op that needs the real sgl_kernel CPU build."
        )

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"STAND-IN placeholder for sgl_kernel.{name}: raises NotImplementedError when called."
    return op


def __getattr__(name: str):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    op = _missing_op(name)
    globals()[name] = op
    return op
