"""The Triton paged-attention kernels compute what the torch reference computes.

On a machine without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1), loaded
as a private copy of engine/triton_attention.py so that the process's own engine.triton_attention
stays compiled for the GPU; with CUDA the same checks run on the card with the compiled kernels.
The interpreter executes every program in Python, so the shapes here are small.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
import engine.attention
from engine.attention import AttentionMetadata, paged_attention, resolve_attention_backend
from engine.math_utils import cdiv
from engine.model import LlamaConfig, LlamaForCausalLM
from engine.model_runner import ModelRunner
from engine.outputs import CachedRequestData, NewRequestData, SchedulerOutput
from engine.request import Request
from engine.sampling_params import SamplingParams

ON_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
SCALE = 0.125  # 1 / sqrt(64)


def _load_kernels():
    """engine.triton_attention itself on CUDA; on the CPU a copy whose kernels the interpreter runs."""
    if ON_CUDA:
        return importlib.import_module("engine.triton_attention")
    path = Path(engine.__file__).with_name("triton_attention.py")
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # read when @triton.jit decorates, i.e. while the module executes
    try:
        spec = importlib.util.spec_from_file_location("engine._triton_attention_interpreted", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module


kernels = _load_kernels()


@pytest.fixture(autouse=True)
def interpreter_while_testing(monkeypatch):
    # The interpreter also consults the variable while it launches (and when it lazily imports parts of Triton).
    if not ON_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def triton_backend(monkeypatch):
    """Route engine.attention's "triton" branch to the kernels under test."""
    if not ON_CUDA:
        monkeypatch.setitem(sys.modules, "engine.triton_attention", kernels)
        monkeypatch.setattr(engine, "triton_attention", kernels, raising=False)


# ---------------------------------------------------------------- a random paged batch


def random_batch(
    query_lens: list[int],
    seq_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int = 64,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Random query and K/V pool; each request's blocks scattered over the pool in random order."""
    generator = torch.Generator().manual_seed(seed)
    blocks_per_req = [cdiv(n, block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_req) + 3  # block 0 (null) and two never referenced
    order = (torch.randperm(num_blocks - 1, generator=generator) + 1).tolist()
    tables, next_block = [], 0
    for n in blocks_per_req:
        tables.append(order[next_block : next_block + n])
        next_block += n
    width = max(blocks_per_req)
    padded = [t + [0] * (width - len(t)) for t in tables]
    query_start_loc = [0]
    for q in query_lens:
        query_start_loc.append(query_start_loc[-1] + q)
    positions = [p for q, n in zip(query_lens, seq_lens) for p in range(n - q, n)]
    slots = [t[p // block_size] * block_size + p % block_size for q, n, t in zip(query_lens, seq_lens, tables) for p in range(n - q, n)]

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype).to(DEVICE)

    as_long = lambda values: torch.tensor(values, dtype=torch.long, device=DEVICE)  # noqa: E731
    metadata = AttentionMetadata(
        slot_mapping=as_long(slots),
        query_start_loc=as_long(query_start_loc),
        seq_lens=as_long(seq_lens),
        block_tables=as_long(padded),
        positions=as_long(positions),
    )
    query = randn(query_start_loc[-1], num_heads, head_dim)
    k_cache = randn(num_blocks, block_size, num_kv_heads, head_dim)
    v_cache = randn(num_blocks, block_size, num_kv_heads, head_dim)
    return query, k_cache, v_cache, metadata


# ---------------------------------------------------------------- decode


@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_kernel_equals_the_torch_reference_with_gqa_9_to_3(num_splits):
    # Lengths: one token, a block boundary, a tile boundary plus one, several tiles.
    seq_lens = [1, 16, 33, 70]
    query, k_cache, v_cache, metadata = random_batch([1] * 4, seq_lens, num_heads=9, num_kv_heads=3)
    expected = paged_attention(query, k_cache, v_cache, metadata, SCALE)
    out = kernels.paged_decode_attention(query, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, SCALE, num_splits)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq_lens=st.lists(st.integers(1, 60), min_size=1, max_size=3),
    heads=st.sampled_from([(9, 3), (4, 4), (8, 1)]),
    block_size=st.sampled_from([8, 16]),
    num_splits=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_decode_kernel_equals_the_torch_reference_for_any_lengths_and_splits(seq_lens, heads, block_size, num_splits, seed):
    num_heads, num_kv_heads = heads
    query, k_cache, v_cache, metadata = random_batch(
        [1] * len(seq_lens), seq_lens, num_heads, num_kv_heads, head_dim=16, block_size=block_size, seed=seed
    )
    expected = paged_attention(query, k_cache, v_cache, metadata, SCALE)
    out = kernels.paged_decode_attention(query, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, SCALE, num_splits)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_decode_kernel_in_bfloat16_matches_float32_attention_of_the_same_values():
    query, k_cache, v_cache, metadata = random_batch([1, 1], [20, 45], num_heads=9, num_kv_heads=3, dtype=torch.bfloat16)
    expected = paged_attention(query.float(), k_cache.float(), v_cache.float(), metadata, SCALE)
    out = kernels.paged_decode_attention(query, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, SCALE, 2)
    assert out.dtype == torch.bfloat16
    # Only the final rounding to bfloat16 separates them (relative step 2**-8).
    torch.testing.assert_close(out.float(), expected, rtol=2**-7, atol=1e-2)


def test_decode_kernel_reads_nothing_past_each_context():
    query, k_cache, v_cache, metadata = random_batch([1, 1], [5, 23], num_heads=9, num_kv_heads=3)
    before = kernels.paged_decode_attention(query, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, SCALE, 2)
    # Poison every slot outside the contexts (block 0, unreferenced blocks, block tails).
    used = torch.zeros(k_cache.shape[:2], dtype=torch.bool, device=DEVICE)
    for row, n in zip(metadata.block_tables.tolist(), metadata.seq_lens.tolist()):
        for p in range(n):
            used[row[p // k_cache.shape[1]], p % k_cache.shape[1]] = True
    k_cache[~used] = float("nan")
    v_cache[~used] = float("nan")
    after = kernels.paged_decode_attention(query, k_cache, v_cache, metadata.block_tables, metadata.seq_lens, SCALE, 2)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


# ---------------------------------------------------------------- prefill


def test_prefill_kernel_equals_the_torch_reference_on_a_mixed_batch():
    # A whole prompt longer than one query tile, a chunk over a cached prefix, a decode row.
    query_lens = [40, 7, 1]
    seq_lens = [40, 50, 19]
    query, k_cache, v_cache, metadata = random_batch(query_lens, seq_lens, num_heads=9, num_kv_heads=3)
    expected = paged_attention(query, k_cache, v_cache, metadata, SCALE)
    out = kernels.paged_attention(query, k_cache, v_cache, metadata, SCALE)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the whole model


TINY = LlamaConfig(
    vocab_size=128,
    hidden_size=144,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=16,
    max_position_embeddings=128,
)
BLOCK_SIZE = 16


def _run_greedy(model: LlamaForCausalLM, backend: str, prompts: list[list[int]], steps: int) -> tuple[list[list[int]], ModelRunner]:
    """Prefill all prompts in one step, then decode `steps` tokens each; one fresh block table per request."""
    runner = ModelRunner(model, TINY, BLOCK_SIZE, num_blocks=32, device=DEVICE, dtype=torch.float32, attention_backend=backend)
    requests = [Request(f"r{i}", list(p), SamplingParams(temperature=0.0)) for i, p in enumerate(prompts)]
    blocks_per_req = cdiv(max(map(len, prompts)) + steps, BLOCK_SIZE)
    block_ids = {r.request_id: list(range(1 + i * blocks_per_req, 1 + (i + 1) * blocks_per_req)) for i, r in enumerate(requests)}
    computed = {r.request_id: 0 for r in requests}
    for step in range(steps + 1):
        scheduled = {r.request_id: r.num_tokens - computed[r.request_id] for r in requests}
        output = runner.execute_model(
            SchedulerOutput(
                # Whole tables up front (step 0), then no new blocks: every table was sized for the run.
                scheduled_new_reqs=[NewRequestData.from_request(r, block_ids[r.request_id]) for r in requests] if step == 0 else [],
                scheduled_cached_reqs=CachedRequestData(
                    req_ids=[r.request_id for r in requests] if step else [], resumed_req_ids=set(),
                    new_block_ids=[None for _ in requests] if step else [],
                    num_computed_tokens=[computed[r.request_id] for r in requests] if step else [],
                    num_output_tokens=[r.num_output_tokens for r in requests] if step else [],
                ),
                num_scheduled_tokens=scheduled,
                total_num_scheduled_tokens=sum(scheduled.values()),
                step=step,
            )
        )
        for request, tokens in zip(requests, output.sampled_token_ids):
            computed[request.request_id] = request.num_tokens
            request.append_output_token_ids(tokens)
    return [r.output_token_ids for r in requests], runner


def test_whole_model_greedy_steps_are_the_same_with_triton_and_torch_attention(triton_backend):
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY).to(DEVICE).eval()
    prompts = [[3, 1, 4], list(range(5, 25)), [7] * 17]
    torch_tokens, torch_runner = _run_greedy(model, "torch", prompts, steps=3)
    triton_tokens, triton_runner = _run_greedy(model, "triton", prompts, steps=3)
    assert triton_tokens == torch_tokens
    assert all(len(t) == 4 for t in triton_tokens)
    # Every layer's K/V depends on the attention output of the layer below: the caches agree too
    # (past block 0, where CUDA-graph padding rows write on a GPU).
    for (k_torch, v_torch), (k_triton, v_triton) in zip(torch_runner.kv_caches, triton_runner.kv_caches):
        torch.testing.assert_close(k_triton[1:], k_torch[1:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v_triton[1:], v_torch[1:], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- choosing and refusing


def test_backend_defaults_to_torch_on_the_cpu_and_triton_on_cuda():
    assert resolve_attention_backend(None, torch.device("cpu")) == "torch"
    assert resolve_attention_backend(None, torch.device("cuda")) == "triton"


def test_an_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        resolve_attention_backend("flash", torch.device("cpu"))


def test_triton_on_the_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_attention_backend("triton", torch.device("cpu"))


@pytest.mark.parametrize("head_dim", [12, 48])
def test_a_head_dim_the_kernels_cannot_tile_is_a_clear_error(head_dim):
    query, k_cache, v_cache, metadata = random_batch([1], [4], num_heads=2, num_kv_heads=1, head_dim=head_dim)
    with pytest.raises(ValueError, match="power-of-two head_dim"):
        kernels.paged_attention(query, k_cache, v_cache, metadata, SCALE)
