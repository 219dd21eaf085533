"""Engine configuration, split the way vLLM splits VllmConfig (cache / scheduler / model)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class CacheConfig:
    """Mirrors: vllm.config.cache:CacheConfig (vllm 0.33.0); the paged KV pool."""

    block_size: int = 16
    # Total blocks in the pool, *including* the null block that vLLM's BlockPool reserves
    # (block id 0), so num_blocks - 1 are usable. None: size the pool from kv_cache_memory.
    num_blocks: int | None = None
    kv_cache_memory_bytes: int = 256 * 1024 * 1024
    enable_prefix_caching: bool = True


@dataclass
class SchedulerConfig:
    """Mirrors: vllm.config.scheduler:SchedulerConfig (vllm 0.33.0)."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048
    enable_chunked_prefill: bool = True
    # 0 disables the cap; otherwise a prefill takes at most this many tokens per step.
    long_prefill_token_threshold: int = 0
    policy: Literal["fcfs", "priority"] = "fcfs"
    # "vllm": hash prefix caching in the paged BlockPool (vLLM V1).
    # "sglang": radix-tree prefix matching with longest-prefix-first admission (SGLang "lpm").
    cache_mode: Literal["vllm", "sglang"] = "vllm"
    # AsyncScheduler + EngineCore.step_with_batch_queue (engine/batch_queue.py), vLLM 0.33's default.
    # Off here: on a CPU the host work it hides is under 1% of a step and on vs off measured within
    # the machine's noise (bench/results/async_scheduling.md); --async-scheduling turns it on.
    async_scheduling: bool = False


@dataclass
class ModelConfig:
    model: str | None = None  # GGUF file or HF directory; None = the bundled SmolLM2-135M
    device: str = "cpu"
    dtype: str | None = None  # None: bfloat16 on CUDA and on CPUs with AVX-512 BF16 / AMX, else float32
    seed: int = 0
    attention_backend: str | None = None  # "torch" | "triton"; None: triton on CUDA, torch elsewhere
    enforce_eager: bool = False  # True: no CUDA graphs for decode


@dataclass
class StructuredOutputsConfig:
    """Mirrors: vllm.config.structured_outputs:StructuredOutputsConfig (vllm 0.33.0); xgrammar only."""

    backend: Literal["xgrammar"] = "xgrammar"
    # SGLang's earlier jump-forward decoding (engine/structured_output/jump_forward.py); off by
    # default, as SGLang 0.5.23 has no scheduler path that calls it.
    jump_forward: bool = False


@dataclass
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    structured_outputs: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)
