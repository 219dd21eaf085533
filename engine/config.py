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
class SpeculativeConfig:
    """Mirrors: vllm.config.speculative:SpeculativeConfig (vllm 0.33.0); prompt lookup only: "ngram" and "ngram_gpu".

"ngram" proposes on the host after the step's output reaches the scheduler (vLLM's numba
NgramProposer); "ngram_gpu" proposes on the model runner's side from the tokens it just sampled
and trims drafts it found no match for (vLLM's NgramProposerGPU path,
engine/spec_decode/worker_drafts.py): the one of the two that vLLM 0.33 schedules asynchronously
(vllm/config/speculative.py:68 NgramGPUTypes).

    prompt_lookup_min / max default as vLLM's __post_init__ sets them: both 5 when neither is
    given, else the one given for both (vllm/config/speculative.py:1302-1326
    SpeculativeConfig.__post_init__).
    """

    method: Literal["ngram", "ngram_gpu"] = "ngram"
    num_speculative_tokens: int = 3
    prompt_lookup_max: int | None = None
    prompt_lookup_min: int | None = None

    def __post_init__(self) -> None:
        if self.method not in ("ngram", "ngram_gpu"):
            raise ValueError(f"speculative method {self.method!r} is not supported; this engine has 'ngram' and 'ngram_gpu'")
        if self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be at least 1, got {self.num_speculative_tokens}")
        if self.prompt_lookup_min is None and self.prompt_lookup_max is None:
            self.prompt_lookup_min = self.prompt_lookup_max = 5
        elif self.prompt_lookup_min is None:
            self.prompt_lookup_min = self.prompt_lookup_max
        elif self.prompt_lookup_max is None:
            self.prompt_lookup_max = self.prompt_lookup_min
        if self.prompt_lookup_min < 1:
            raise ValueError(f"prompt_lookup_min must be at least 1, got {self.prompt_lookup_min}")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"prompt_lookup_min={self.prompt_lookup_min} must be <= prompt_lookup_max={self.prompt_lookup_max}"
            )

    def use_ngram_gpu(self) -> bool:
        # Mirrors: vllm.config.speculative:SpeculativeConfig.use_ngram_gpu (vllm 0.33.0)
        return self.method == "ngram_gpu"

    @property
    def num_lookahead_tokens(self) -> int:
        """KV slots past the scheduled tokens: 0 for n-gram, which runs no draft model
        (vllm/config/vllm.py:625-652
        VllmConfig.num_lookahead_tokens)."""
        return 0


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
    # None: no speculative decoding.
    speculative: SpeculativeConfig | None = None
    structured_outputs: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)


def check_speculative_config(config: EngineConfig) -> None:
    """Refuse async scheduling with "ngram" speculation, as vLLM 0.33's V1 model runner does;
    "ngram_gpu" runs with it.

    vLLM marks every method outside EagleModelTypes, NgramGPUTypes ("ngram_gpu") and the draft-model
    methods incompatible with async scheduling on the V1 runner (vllm/config/vllm.py:1651-1666
    VllmConfig.__post_init__), "ngram" among them: asked for explicitly it raises
    (vllm/config/vllm.py:1676-1680 VllmConfig.__post_init__); left at its default it logs "Async
    scheduling is disabled because the V1 model runner does not support it with ngram-based
    speculative decoding" and turns it off (vllm/config/vllm.py:1711-1717 VllmConfig.__post_init__).
    Ours is off unless asked for, so asking for it is the explicit case: an error.
    """
    spec = config.speculative
    if spec is not None and config.scheduler.async_scheduling and not spec.use_ngram_gpu():
        raise ValueError(
            f"async scheduling is not supported with {spec.method}-based speculative decoding "
            "(as vLLM's V1 model runner); use --speculative-method ngram_gpu, or drop --async-scheduling"
        )
