"""The C decode-attention kernel (engine/cpu_decode_attention.py) gives the torch path's answer:
the same rows over the same scattered blocks, in float32 and bfloat16, at the bundled model's
shapes (9 heads over 3 KV heads, dim 64: its specialized loop) and at others (its generic one);
and where it does not apply it says so (None) and the torch path runs."""
from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import attention, cpu_decode_attention
from engine.attention import paged_attention
from tests.paged_batches import decode_step

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the kernel is built with the system's cc")


def torch_path(query, k_cache, v_cache, metadata, scale):
    """The same call with the kernel switched off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention.cpu_decode_attention, "decode_attention", lambda *args: None)
        return paged_attention(query, k_cache, v_cache, metadata, scale)


def test_the_kernel_builds_here():
    assert cpu_decode_attention.available()


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 70), min_size=1, max_size=6),
    shape=st.sampled_from([(9, 3, 64), (4, 2, 8), (6, 6, 32), (8, 1, 24)]),  # heads, kv heads, dim
    block_size=st.sampled_from([1, 4, 16]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_equals_the_torch_path(lengths, shape, block_size, dtype, seed):
    heads, kv_heads, dim = shape
    query, k_cache, v_cache, metadata = decode_step(lengths, heads, kv_heads, dim, block_size, dtype, seed)
    out = paged_attention(query, k_cache, v_cache, metadata(), dim**-0.5)
    expected = torch_path(query, k_cache, v_cache, metadata(), dim**-0.5)
    assert out.dtype == dtype and out.shape == expected.shape
    # bf16: both compute in float32 and round once; they may differ by one bf16 step (2^-8 relative).
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), expected.float(), atol=tolerance, rtol=tolerance)


@settings(max_examples=20, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 90), min_size=0, max_size=8),
    block_size=st.sampled_from([1, 4, 16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_a_task_per_request_gives_the_bits_of_a_task_per_kv_head(lengths, block_size, seed):
    """bf16 at the bundled model's heads with at least two requests per thread: one task reads a
    request's every KV head (and prefetches its next block, and into L2 its values and the next
    request's keys); a task per (request, KV head) gives the same bits, so does the task without
    the L2 prefetch, and garbage outside each request's own context changes neither."""
    lengths = [17, 40, 3, 64] * torch.get_num_threads() + lengths  # at least two requests per thread
    query, k_cache, v_cache, metadata = decode_step(lengths, 9, 3, 64, block_size, torch.bfloat16, seed)
    m = metadata()
    per_request = cpu_decode_attention.decode_attention(query, k_cache, v_cache, m.block_tables, m.seq_lens, 0.125)
    per_head = cpu_decode_attention.decode_attention(query, k_cache, v_cache, m.block_tables, m.seq_lens, 0.125,
                                                     per_head_tasks=True)
    assert torch.equal(per_request, per_head)
    near_only = cpu_decode_attention.decode_attention(query, k_cache, v_cache, m.block_tables, m.seq_lens, 0.125,
                                                      far_prefetch=False)
    assert torch.equal(near_only, per_request)
    owned = {(int(t[p // block_size]), p % block_size) for t, n in zip(m.block_tables, lengths) for p in range(n)}
    for block in range(k_cache.shape[0]):
        for offset in range(block_size):
            if (block, offset) not in owned:
                k_cache[block, offset] = 1e4
                v_cache[block, offset] = float("nan")
    again = cpu_decode_attention.decode_attention(query, k_cache, v_cache, m.block_tables, m.seq_lens, 0.125)
    assert torch.equal(again, per_request)


def test_kernel_runs_for_decode_rows_and_reads_only_each_rows_own_context(monkeypatch):
    """Garbage in the pool past a row's length, or in blocks it does not own, changes nothing."""
    query, k_cache, v_cache, metadata = decode_step([5, 33, 16], 9, 3, 64, 16, torch.bfloat16, 0)
    calls = []
    real = cpu_decode_attention.decode_attention
    monkeypatch.setattr(attention.cpu_decode_attention, "decode_attention",
                        lambda *args: calls.append(1) or real(*args))
    out = paged_attention(query, k_cache, v_cache, metadata(), 0.125)
    assert calls, "the decode batch did not go through the kernel"
    tables, lengths = metadata().block_tables, [5, 33, 16]
    owned = {(int(b), o) for t, n in zip(tables, lengths) for b, o in ((t[p // 16], p % 16) for p in range(n))}
    for block in range(k_cache.shape[0]):
        for offset in range(16):
            if (block, offset) not in owned:
                k_cache[block, offset] = 1e4
                v_cache[block, offset] = float("nan")
    assert torch.equal(paged_attention(query, k_cache, v_cache, metadata(), 0.125), out)


def test_where_the_kernel_does_not_apply_it_returns_none_and_the_torch_path_answers():
    query, k_cache, v_cache, metadata = decode_step([7, 20], 4, 2, 16, 4, torch.float16, 1)
    plan = metadata()
    assert cpu_decode_attention.decode_attention(query, k_cache, v_cache, plan.block_tables, plan.seq_lens, 0.25) is None
    out = paged_attention(query, k_cache, v_cache, plan, 0.25)  # float16: torch's SDPA
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_a_kernel_that_does_not_build_says_so_once_and_the_torch_path_serves(monkeypatch, tmp_path, caplog):
    import shutil

    from engine import c_build

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached: the build must run
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    with caplog.at_level("WARNING", logger="engine.c_build"):
        assert c_build.load("broken", "int f(void) { return 0; }") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"CPU kernel broken did not build with {shutil.which('false')} (CalledProcessError); using its torch fallback"]
    assert not list(tmp_path.rglob("*.so"))  # no half-built library left to load later
