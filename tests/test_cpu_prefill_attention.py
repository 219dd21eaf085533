"""The C prefill-attention kernel (engine/cpu_prefill_attention.py) gives the torch path's answer
(one SDPA call per request over its gathered context): whole prompts, chunks after cached context
and decode rows in one step, over scattered blocks, in float32 and bfloat16, at the bundled
model's shapes (9 heads over 3 KV heads, dim 64: its specialized loop) and at others (its generic
one); where it does not apply it says so and the torch path runs."""
from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import attention, cpu_prefill_attention
from engine.attention import paged_attention
from tests.paged_batches import mixed_step

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the kernel is built with the system's cc")


def torch_path(query, k_cache, v_cache, metadata, scale):
    """The same call with the prefill kernel switched off (decode rows still take their own kernel)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention.cpu_prefill_attention, "prefill_attention", lambda *args: False)
        return paged_attention(query, k_cache, v_cache, metadata, scale)


def test_the_kernel_builds_here():
    assert cpu_prefill_attention.available()


# (cached tokens, new tokens): new > attention.SHORT_QUERY is a prefill (or a chunk), new == 1 a decode.
requests = st.lists(st.tuples(st.integers(0, 90), st.integers(attention.SHORT_QUERY + 1, 100)) |
                    st.tuples(st.integers(0, 60), st.just(1)), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(
    requests=requests.filter(lambda rs: any(new > attention.SHORT_QUERY for _, new in rs)),
    shape=st.sampled_from([(9, 3, 64), (4, 2, 32), (6, 6, 16), (8, 1, 48)]),  # heads, kv heads, dim
    block_size=st.sampled_from([1, 4, 16]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_equals_the_torch_path(requests, shape, block_size, dtype, seed):
    heads, kv_heads, dim = shape
    query, k_cache, v_cache, metadata = mixed_step(requests, heads, kv_heads, dim, block_size, dtype, seed)
    calls = []
    real = cpu_prefill_attention.prefill_attention
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention.cpu_prefill_attention, "prefill_attention", lambda *a: calls.append(real(*a)) or calls[-1])
        out = paged_attention(query, k_cache, v_cache, metadata(), dim**-0.5)
    assert calls == [True], "the step's prefills did not go through the kernel in one call"
    expected = torch_path(query, k_cache, v_cache, metadata(), dim**-0.5)
    assert out.dtype == dtype and out.shape == expected.shape
    # bf16: both accumulate in float32 and round once; they may differ by a bf16 step or two (2^-8 relative).
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected.float(), atol=tolerance, rtol=tolerance)


def test_each_token_reads_only_its_own_causal_prefix():
    """Garbage in the pool past a token's position, or in blocks its request does not own, changes nothing."""
    reqs, block = [(0, 40), (21, 30), (7, 1)], 16
    query, k_cache, v_cache, metadata = mixed_step(reqs, 9, 3, 64, block, torch.bfloat16, 0)
    out = paged_attention(query, k_cache, v_cache, metadata(), 0.125)
    tables = metadata().block_tables
    owned = {(int(t[p // block]), p % block) for t, (c, n) in zip(tables, reqs) for p in range(c + n)}
    for b in range(k_cache.shape[0]):
        for offset in range(block):
            if (b, offset) not in owned:
                k_cache[b, offset] = 1e4
                v_cache[b, offset] = float("nan")
    assert torch.equal(paged_attention(query, k_cache, v_cache, metadata(), 0.125), out)
    # A later token's key changed: the earlier tokens of the same request do not see it.
    first, later = out[:10].clone(), out[10:40].clone()
    t0 = tables[0]
    k_cache[t0[39 // block], 39 % block] = 1e4
    again = paged_attention(query, k_cache, v_cache, metadata(), 0.125)
    assert torch.equal(again[:10], first) and not torch.equal(again[39], later[-1])


def test_where_the_kernel_does_not_apply_it_says_so_and_the_torch_path_answers():
    query, k_cache, v_cache, metadata = mixed_step([(0, 20), (5, 12)], 4, 2, 24, 4, torch.float32, 1)  # dim 24: not a multiple of 16
    plan = metadata()
    out = torch.empty_like(query)
    args = (plan.block_tables, torch.tensor([0, 20]), torch.tensor([20, 12]), plan.seq_lens)
    assert not cpu_prefill_attention.prefill_attention(query, k_cache, v_cache, *args, out, 0.25)
    half = [t.to(torch.float16) for t in (query, k_cache, v_cache)]
    assert not cpu_prefill_attention.prefill_attention(*half, *args, out.to(torch.float16), 0.25)
    expected = torch_path(query, k_cache, v_cache, metadata(), 0.25)
    torch.testing.assert_close(paged_attention(query, k_cache, v_cache, metadata(), 0.25), expected)
