"""Replay runner for the real vLLM 0.33 V1 Scheduler + KVCacheManager, on the CPU with no model.

Built the way vLLM's own scheduler unit tests build it: a VllmConfig over a model directory that
holds only a llama config.json (SmolLM2-135M's shape), a KVCacheConfig with one
FullAttentionSpec group, Requests carrying a block hasher, and a hand-built ModelRunnerOutput fed
to update_from_output. The synchronous Scheduler, or with ReplayConfig.async_scheduling vLLM 0.33's
default, AsyncScheduler, driven in EngineCore.step_with_batch_queue's order
(tracer/replay/runners/batch_queue.py).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from tracer.replay.config import ReplayConfig
from tracer.replay.runners.base import ReplayError, V1SchedulerRunner
from tracer.replay.workload import WorkloadRequest

# SmolLM2-135M's shape; the scheduler reads only max_position_embeddings and the architecture.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
}


MODEL_DIR_PREFIX = "servetrace-vllm-model-"


@contextmanager
def config_only_model_dir() -> Iterator[str]:
    """A model directory holding only SMOLLM2_CONFIG's config.json, removed on exit. vLLM reads
    it while it builds ModelConfig and VllmConfig and never after, so a directory lives only as
    long as building one scheduler takes: replay leaves nothing behind in the temp dir."""
    with tempfile.TemporaryDirectory(prefix=MODEL_DIR_PREFIX) as directory:
        (Path(directory) / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
        yield directory


@lru_cache(maxsize=1)
def _vllm():
    """Import vLLM once per process (several seconds); the modules replay needs."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, SpeculativeConfig, VllmConfig
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.outputs import DraftTokenIds, ModelRunnerOutput
        from vllm.v1.request import Request
        from vllm.v1.structured_output import StructuredOutputManager
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ReplayError(f"vLLM is not importable here ({exc}); replay --engines vllm needs vllm==0.33.0") from exc
    init_none_hash(sha256)
    return dict(
        torch=torch, CacheConfig=CacheConfig, ModelConfig=ModelConfig, SchedulerConfig=SchedulerConfig,
        VllmConfig=VllmConfig, SamplingParams=SamplingParams, sha256=sha256,
        get_request_block_hasher=get_request_block_hasher, Scheduler=Scheduler, AsyncScheduler=AsyncScheduler, FullAttentionSpec=FullAttentionSpec,
        KVCacheConfig=KVCacheConfig, KVCacheGroupSpec=KVCacheGroupSpec, ModelRunnerOutput=ModelRunnerOutput,
        SpeculativeConfig=SpeculativeConfig, DraftTokenIds=DraftTokenIds,
        Request=Request, StructuredOutputManager=StructuredOutputManager,
    )


@contextmanager
def environment_kept() -> Iterator[None]:
    """os.environ as it was before the block. VllmConfig's __post_init__ runs the platform's
    check_and_update_config, and on a CPU that edits the environment for the worker processes vLLM
    would start: VLLM_WORKER_MULTIPROC_METHOD, NUMEXPR_MAX_THREADS, two TORCHINDUCTOR_ settings,
    LOCAL_WORLD_SIZE, and LD_PRELOAD gains torch's libgomp (and tcmalloc where bundled), vLLM 0.33's
    vllm/platforms/cpu.py:426-531 CpuPlatform.check_and_update_config. Replay starts no worker; left
    in place, the edit reaches every process this one starts later (a server, a user's subprocess),
    whose libgomp then reads its settings before any Python runs."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def build_vllm_scheduler(config: ReplayConfig):
    """A real vllm.v1.core.sched.scheduler.Scheduler under the replay config."""
    with config_only_model_dir() as model_dir:
        return _build_vllm_scheduler(config, model_dir)


def _build_vllm_scheduler(config: ReplayConfig, model_dir: str):
    v = _vllm()
    try:
        model_config = v["ModelConfig"](
            model=model_dir, skip_tokenizer_init=True, dtype="float32", seed=0, max_model_len=config.max_model_len
        )
        scheduler_config = v["SchedulerConfig"](**config.scheduler_kwargs(), is_encoder_decoder=False)
        cache_config = v["CacheConfig"](block_size=config.block_size, enable_prefix_caching=config.enable_prefix_caching)
        # n-gram speculation: no draft model, no lookahead slots; the drafts are forced by replay.
        # Under async scheduling "ngram_gpu", the n-gram method vLLM's V1 runner schedules
        # asynchronously (vllm/config/vllm.py:1651-1666 VllmConfig.__post_init__).
        speculative_config = v["SpeculativeConfig"](
            method="ngram_gpu" if config.async_scheduling else "ngram", num_speculative_tokens=config.num_speculative_tokens
        ) if config.num_speculative_tokens else None
        with environment_kept():
            vllm_config = v["VllmConfig"](
                scheduler_config=scheduler_config, model_config=model_config, cache_config=cache_config,
                speculative_config=speculative_config,
            )
    except ValueError as exc:
        raise ReplayError(f"vLLM rejects this config: {exc}") from None
    spec = v["FullAttentionSpec"](config.block_size, num_kv_heads=1, head_size=1, dtype=v["torch"].float32)
    kv_cache_config = v["KVCacheConfig"](
        num_blocks=config.num_blocks, kv_cache_tensors=[], kv_cache_groups=[v["KVCacheGroupSpec"](["layer"], spec)]
    )
    cache_config.num_gpu_blocks = config.num_blocks
    # vLLM picks the class from scheduler_config.async_scheduling
    # (vllm/config/scheduler.py:231-239 SchedulerConfig.get_scheduler_cls); replay from its own config.
    scheduler_class = v["AsyncScheduler"] if config.async_scheduling else v["Scheduler"]
    scheduler = scheduler_class(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=v["StructuredOutputManager"](vllm_config),
        block_size=config.block_size,
        log_stats=True,
    )
    _check_effective_config(scheduler, config)
    return scheduler


def _check_effective_config(scheduler, config: ReplayConfig) -> None:
    """vLLM's config classes may adjust values; a replay is only meaningful if they did not."""
    effective = {
        "max_num_seqs": scheduler.max_num_running_reqs,
        "max_num_batched_tokens": scheduler.max_num_scheduled_tokens,
        "max_model_len": scheduler.max_model_len,
        "enable_chunked_prefill": scheduler.scheduler_config.enable_chunked_prefill,
        "long_prefill_token_threshold": scheduler.scheduler_config.long_prefill_token_threshold,
        "enable_prefix_caching": scheduler.kv_cache_manager.enable_caching,
        "block_size": scheduler.block_size,
    }
    changed = {k: (getattr(config, k), v) for k, v in effective.items() if getattr(config, k) != v}
    if changed:
        details = ", ".join(f"{k}: asked {a}, vLLM uses {b}" for k, (a, b) in changed.items())
        raise ReplayError(f"vLLM adjusted the replay config ({details})")
    if not scheduler.scheduler_reserve_full_isl:
        raise ReplayError("vLLM's full-sequence admission gate (scheduler_reserve_full_isl) is off; ours always applies it")
    # vLLM 0.32 (the live CPU build, run by replay --from-trace in .venv-vllm) has no prefill cadence:
    # getattr, so the same runner builds both versions' Scheduler.
    if getattr(scheduler, "local_prefill_interval", 1) > 1 or scheduler.adaptive_long_prefill_threshold:
        raise ReplayError("vLLM's prefill cadence / adaptive threshold is on; replay mirrors neither")


class VllmRunner(V1SchedulerRunner):
    name = "vllm"
    # A deque or a heap, reordered only by adds and pops (vllm/v1/core/sched/request_queue.py:75-129
    # FCFSRequestQueue, vllm/v1/core/sched/request_queue.py:131-197 PriorityRequestQueue).
    waiting_order_follows_membership = True

    def __init__(self, config: ReplayConfig) -> None:
        super().__init__(config)
        self.v = _vllm()
        self.scheduler = build_vllm_scheduler(config)
        self.block_hasher = self.v["get_request_block_hasher"](config.block_size, self.v["sha256"])
        self._all: dict[str, Any] = {}

    def add_request(self, request: WorkloadRequest, arrival_time: float) -> None:
        params = self.v["SamplingParams"](max_tokens=request.max_tokens, ignore_eos=True, temperature=0.0)
        vllm_request = self.v["Request"](
            request_id=request.id,
            prompt_token_ids=list(request.prompt_token_ids),
            sampling_params=params,
            pooling_params=None,
            arrival_time=arrival_time,
            priority=request.priority,
            block_hasher=self.block_hasher,
        )
        self._all[request.id] = vllm_request
        self.scheduler.add_request(vllm_request)

    def schedule(self):
        return self.scheduler.schedule()

    def update_from_output(self, scheduler_output, sampled: dict[str, list[int]]) -> dict[str, str]:
        req_ids = list(scheduler_output.num_scheduled_tokens)
        output = self.v["ModelRunnerOutput"](
            req_ids=req_ids,
            req_id_to_index={rid: i for i, rid in enumerate(req_ids)},
            sampled_token_ids=[sampled[rid] for rid in req_ids],
            logprobs=None,
            prompt_logprobs_dict={},
            pooler_output=[],
        )
        engine_outputs = self.scheduler.update_from_output(scheduler_output, output)
        finished = {}
        for outputs in (engine_outputs or {}).values():
            for o in outputs.outputs:
                if o.finish_reason is not None:
                    finished[o.request_id] = str(o.finish_reason)
        return finished

    def update_draft_token_ids(self, req_ids: list[str], draft_token_ids: list[list[int]]) -> None:
        # Mirrors: vllm.v1.engine.core:EngineCore.post_step (vllm 0.33.0), with the drafts forced
        self.scheduler.update_draft_token_ids(self.v["DraftTokenIds"](req_ids, draft_token_ids))

    def num_free_blocks(self) -> int:
        return self.scheduler.kv_cache_manager.block_pool.get_num_free_blocks()

    def _table(self, block_ids: Any) -> list[int]:
        # tuple[list[int], ...], one list per KV cache group (vllm/v1/core/sched/output.py:47
        # NewRequestData.block_ids); the replay's KVCacheConfig has exactly one group.
        (group,) = block_ids
        return list(group)
