"""Decode steps replayed from CUDA graphs give what the same steps give run eagerly.

The capture itself needs a CUDA device; those tests skip without one. The bucket sizes and the
refusals are checked everywhere.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from engine.attention import AttentionMetadata
from engine.cuda_graphs import DecodeCudaGraphs, decode_batch_sizes
from engine.math_utils import cdiv
from engine.model import LlamaConfig, LlamaForCausalLM
from engine.model_runner import ModelRunner
from engine.outputs import CachedRequestData, NewRequestData, SchedulerOutput
from engine.request import Request
from engine.sampling_params import SamplingParams

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; none here")

TINY = LlamaConfig(
    vocab_size=256,
    hidden_size=144,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=16,
    max_position_embeddings=128,
)
BLOCK_SIZE = 16
NUM_BLOCKS = 64


# ---------------------------------------------------------------- buckets and refusals (any machine)


def test_buckets_follow_vllms_capture_sizes():
    assert decode_batch_sizes(4) == [1, 2, 4]
    assert decode_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    sizes = decode_batch_sizes(300)
    assert sizes[:5] == [1, 2, 4, 8, 16]
    assert sizes[-4:] == [256, 272, 288, 300]


@given(st.integers(1, 1024))
def test_every_batch_up_to_the_maximum_has_a_bucket(max_num_seqs):
    sizes = decode_batch_sizes(max_num_seqs)
    assert sizes == sorted(set(sizes)) and sizes[-1] == max_num_seqs
    # No bucket pads by more than 16 rows (8 below 256).
    assert all(b - a <= 16 for a, b in zip(sizes, sizes[1:]))


def test_zero_max_num_seqs_is_a_clear_error():
    with pytest.raises(ValueError, match="max_num_seqs must be >= 1"):
        decode_batch_sizes(0)


def test_graphs_on_the_cpu_are_a_clear_error():
    model = LlamaForCausalLM(TINY)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        ModelRunner(model, TINY, BLOCK_SIZE, NUM_BLOCKS, "cpu", torch.float32, use_cuda_graphs=True)


def test_the_cpu_runner_runs_eagerly_on_the_torch_backend_by_default():
    runner = ModelRunner(LlamaForCausalLM(TINY), TINY, BLOCK_SIZE, NUM_BLOCKS, "cpu", torch.float32)
    assert runner.attention_backend == "torch"
    assert runner.cuda_graphs is None


# ---------------------------------------------------------------- replay vs eager (CUDA)


def _greedy(runner: ModelRunner, prompts: list[list[int]], max_new: list[int]) -> list[list[int]]:
    """Prefill every prompt, then decode until each request has its max_new tokens; the batch shrinks as they end."""
    requests = [Request(f"r{i}", list(p), SamplingParams(temperature=0.0)) for i, p in enumerate(prompts)]
    per_req = cdiv(max(map(len, prompts)) + max(max_new), BLOCK_SIZE)
    block_ids = {r.request_id: list(range(1 + i * per_req, 1 + (i + 1) * per_req)) for i, r in enumerate(requests)}
    computed = {r.request_id: 0 for r in requests}
    step = 0
    while active := [r for r, n in zip(requests, max_new) if r.num_output_tokens < n]:
        scheduled = {r.request_id: r.num_tokens - computed[r.request_id] for r in active}
        output = runner.execute_model(
            SchedulerOutput(
                # Whole tables up front (step 0), then no new blocks: every table was sized for the run.
                scheduled_new_reqs=[NewRequestData.from_request(r, block_ids[r.request_id]) for r in active] if step == 0 else [],
                scheduled_cached_reqs=CachedRequestData(
                    req_ids=[r.request_id for r in active] if step else [], resumed_req_ids=set(),
                    new_block_ids=[None for _ in active] if step else [],
                    num_computed_tokens=[computed[r.request_id] for r in active] if step else [],
                    num_output_tokens=[r.num_output_tokens for r in active] if step else [],
                ),
                num_scheduled_tokens=scheduled,
                total_num_scheduled_tokens=sum(scheduled.values()),
                step=step,
            )
        )
        for request, tokens in zip(active, output.sampled_token_ids):
            computed[request.request_id] = request.num_tokens
            request.append_output_token_ids(tokens)
        step += 1
    return [r.output_token_ids for r in requests]


@needs_cuda
def test_graph_replay_gives_the_eager_tokens_and_kv_cache():
    torch.manual_seed(0)
    dtype = torch.float32
    model = LlamaForCausalLM(TINY).to("cuda", dtype).eval()
    # Five, four, three, then two requests decode: buckets 8, 4, 4, 2, all but the last with padding rows.
    prompts = [[3, 1, 4], list(range(5, 40)), [7] * 17, [9, 9], list(range(100, 120))]
    max_new = [6, 12, 12, 4, 9]
    runners = {
        graphs: ModelRunner(model, TINY, BLOCK_SIZE, NUM_BLOCKS, "cuda", dtype, attention_backend="triton",
                            use_cuda_graphs=graphs, max_num_seqs=8, max_model_len=TINY.max_position_embeddings)
        for graphs in (False, True)
    }
    tokens = {graphs: _greedy(runner, prompts, max_new) for graphs, runner in runners.items()}
    assert runners[True].cuda_graphs.graphs, "no decode step ran from a graph"
    assert tokens[True] == tokens[False]
    real_blocks = slice(1, None)  # block 0 takes the padding rows' writes
    # cuBLAS may pick another kernel for a padded batch, so equal up to float32 rounding, not bitwise.
    for (k_eager, v_eager), (k_graph, v_graph) in zip(runners[False].kv_caches, runners[True].kv_caches):
        torch.testing.assert_close(k_graph[real_blocks], k_eager[real_blocks], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v_graph[real_blocks], v_eager[real_blocks], rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_replayed_logits_equal_the_eager_forward_for_every_batch_size(dtype, tolerance):
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY).to("cuda", dtype).eval()
    runner = ModelRunner(model, TINY, BLOCK_SIZE, NUM_BLOCKS, "cuda", dtype, attention_backend="triton",
                         use_cuda_graphs=False)
    graphs = DecodeCudaGraphs(model, runner.kv_caches, max_num_seqs=8, max_blocks_per_seq=4)
    generator = torch.Generator().manual_seed(1)
    for k, v in runner.kv_caches:
        k.copy_(torch.randn(k.shape, generator=generator))
        v.copy_(torch.randn(v.shape, generator=generator))
    for num_reqs in (1, 3, 8):
        seq_lens = torch.randint(1, 4 * BLOCK_SIZE, (num_reqs,), generator=generator)
        block_tables = 1 + torch.randperm(NUM_BLOCKS - 1, generator=generator)[: num_reqs * 4].view(num_reqs, 4)
        positions = seq_lens - 1
        slots = block_tables[torch.arange(num_reqs), positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
        input_ids = torch.randint(0, TINY.vocab_size, (num_reqs,), generator=generator)
        metadata = AttentionMetadata(
            slot_mapping=slots.cuda(), query_start_loc=torch.arange(num_reqs + 1).cuda(), seq_lens=seq_lens.cuda(),
            block_tables=block_tables.cuda(), positions=positions.cuda(), attention_backend="triton",
        )
        with torch.inference_mode():
            eager = model.compute_logits(model(input_ids.cuda(), positions.cuda(), metadata, runner.kv_caches))
            replayed = graphs.run(input_ids.cuda(), positions.cuda(), metadata).clone()
        torch.testing.assert_close(replayed, eager, rtol=tolerance, atol=tolerance)
