"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step of a small model is a few hundred tiny kernels; launched one by one from Python
the launches, not the GPU, set the pace. A CUDA graph records the whole forward (and the LM
head) once per batch size and replays it with one launch. The graph reads its inputs from fixed
("static") buffers, so a step copies its batch into them and pads up to the next captured size.

Mirrors: vllm.v1.worker.gpu.model_runner:GPUModelRunner.capture_model, vllm.v1.worker.gpu.cudagraph_utils:ModelCudaGraphManager.capture, vllm.v1.worker.gpu_model_runner:GPUModelRunner.capture_model, vllm.compilation.cuda_graph:CUDAGraphWrapper (vllm 0.33.0)
vLLM 0.33 defaults to Model Runner V2 (vllm/config/vllm.py:748-767 VllmConfig.use_v2_model_runner),
which captures through ModelCudaGraphManager.capture
(vllm/v1/worker/gpu/model_runner.py:1116 GPUModelRunner.capture_model); the V1 runner
(VLLM_USE_V2_MODEL_RUNNER=0) captures with CUDAGraphWrapper. Ours: FULL mode, decode-only batches.

Padding rows are harmless by construction: they write their K/V into slot 0 of block 0, the null
block that the block pool never hands to a request, and attend over that one slot.
"""
from __future__ import annotations

import bisect

import torch

from engine.attention_metadata import AttentionMetadata
from engine.model import LlamaForCausalLM


def decode_batch_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default capture sizes, [1, 2, 4, 8, 16, ..., 256, 272, ...], here up to max_num_seqs (always included).

    vLLM's ceiling is min(2 x max_num_seqs x decode query length, 512 (1024 on SM100),
    max_num_batched_tokens) (vllm/config/vllm.py:2460-2470 VllmConfig._set_cudagraph_sizes,
    vllm/config/vllm.py:2551-2552 VllmConfig._set_cudagraph_sizes); ours stops at max_num_seqs.
    """
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, max_num_seqs + 1, 16))
    return sorted({s for s in sizes if s <= max_num_seqs} | {max_num_seqs})


class DecodeCudaGraphs:
    """Captured decode forwards (hidden states -> float32 logits) of every bucket, and their static inputs."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        max_num_seqs: int,
        max_blocks_per_seq: int,
        attention_backend: str = "triton",
    ) -> None:
        device = kv_caches[0][0].device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the KV cache lives on {device}")
        if attention_backend != "triton":
            # The torch reference decode path sizes its tensors from host-side lengths each step.
            raise ValueError("CUDA graphs need the 'triton' attention backend, whose launch depends only on shapes")
        self.model = model
        self.kv_caches = kv_caches
        self.attention_backend = attention_backend
        self.batch_sizes = decode_batch_sizes(max_num_seqs)
        self.max_blocks_per_seq = max_blocks_per_seq
        n = self.batch_sizes[-1]
        as_long = dict(dtype=torch.long, device=device)
        self.input_ids = torch.zeros(n, **as_long)
        self.positions = torch.zeros(n, **as_long)
        self.slot_mapping = torch.zeros(n, **as_long)
        self.seq_lens = torch.ones(n, **as_long)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, **as_long)
        self.query_start_loc = torch.arange(n + 1, **as_long)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def can_run(self, num_reqs: int, block_table_width: int) -> bool:
        return num_reqs <= self.max_batch_size and block_table_width <= self.max_blocks_per_seq

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so the smaller graphs reuse its memory pool."""
        pool = None
        for batch_size in reversed(self.batch_sizes):
            metadata = self._static_metadata(batch_size)
            # One eager run first: compiles the Triton kernels and sets up cuBLAS outside the capture.
            self._forward(batch_size, metadata)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[batch_size] = self._forward(batch_size, metadata)
            pool = graph.pool()
            self.graphs[batch_size] = graph
        torch.cuda.synchronize()

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        """Replay the smallest bucket that fits this decode batch -> logits [num_reqs, vocab].

        The result is a view of the graph's output buffer: use it before the next run.
        """
        num_reqs = input_ids.shape[0]
        width = metadata.block_tables.shape[1]
        if not self.can_run(num_reqs, width):
            raise ValueError(
                f"decode batch of {num_reqs} requests x {width} blocks exceeds the captured "
                f"{self.max_batch_size} x {self.max_blocks_per_seq}"
            )
        if not self.graphs:
            self.capture()
        batch_size = self.batch_sizes[bisect.bisect_left(self.batch_sizes, num_reqs)]
        self.input_ids[:num_reqs].copy_(input_ids)
        self.positions[:num_reqs].copy_(positions)
        self.slot_mapping[:num_reqs].copy_(metadata.slot_mapping)
        self.seq_lens[:num_reqs].copy_(metadata.seq_lens)
        self.block_tables[:num_reqs, :width].copy_(metadata.block_tables)
        if batch_size > num_reqs:
            # Stale block tables and ids of padding rows are only read; their writes must go to the null block.
            self.slot_mapping[num_reqs:batch_size].zero_()
            self.seq_lens[num_reqs:batch_size].fill_(1)
        self.graphs[batch_size].replay()
        return self.logits[batch_size][:num_reqs]

    def _static_metadata(self, batch_size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:batch_size],
            query_start_loc=self.query_start_loc[: batch_size + 1],
            seq_lens=self.seq_lens[:batch_size],
            block_tables=self.block_tables[:batch_size],
            positions=self.positions[:batch_size],
            # Host copies describe the decode-only shape; the Triton decode path never reads them.
            query_start_loc_cpu=list(range(batch_size + 1)),
            seq_lens_cpu=[1] * batch_size,
            attention_backend=self.attention_backend,
        )

    def _forward(self, batch_size: int, metadata: AttentionMetadata) -> torch.Tensor:
        hidden = self.model(self.input_ids[:batch_size], self.positions[:batch_size], metadata, self.kv_caches)
        return self.model.compute_logits(hidden)
