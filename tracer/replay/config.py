"""The one configuration every engine in a replay runs under."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


class ReplayConfigError(ValueError):
    """A replay configuration that an engine cannot run."""


@dataclass(frozen=True)
class ReplayConfig:
    block_size: int = 16
    # Blocks in the KV pool *including* the null block both vLLM's BlockPool and ours reserve.
    num_blocks: int = 256
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 256
    max_model_len: int = 2048
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    policy: str = "fcfs"
    long_prefill_token_threshold: int = 0
    # SGLang only (its --priority-scheduling-preemption-threshold, default 10:
    # sglang/srt/arg_groups/fields/schedule.py:122-125): with policy priority, a request preempts a
    # running one whose priority is lower by more than this (PrefillAdder.preempt_to_schedule,
    # sglang/srt/managers/schedule_policy.py:1745-1747). vLLM has no such knob; its runners ignore it.
    priority_scheduling_preemption_threshold: int = 10
    # SGLang prefix-cache replay: the token pool size (0: num_blocks * block_size) and how many
    # requests hold their radix-tree path locked at once.
    radix_pool_tokens: int = 0
    radix_concurrency: int = 4
    # Speculative decoding: drafts per request per step (0: off); the drafts and their acceptance
    # are forced (tracer/replay/speculation.py). With async_scheduling the method is "ngram_gpu"
    # (vLLM 0.33's V1 runner refuses "ngram" there: vllm/config/vllm.py:1651-1680
    # VllmConfig.__post_init__), whose drafts
    # never reach the scheduler: only the acceptance is forced.
    num_speculative_tokens: int = 0
    # Drive each scheduler as vLLM 0.33 serves by default: its AsyncScheduler (ours:
    # engine.async_scheduler) in EngineCore.step_with_batch_queue's order (tracer/replay/runners/batch_queue.py).
    async_scheduling: bool = False

    def __post_init__(self) -> None:
        positive = ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "radix_concurrency")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ReplayConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_blocks < 2:
            raise ReplayConfigError("num_blocks must be at least 2 (block 0 is the reserved null block)")
        for name in ("long_prefill_token_threshold", "radix_pool_tokens", "num_speculative_tokens",
                     "priority_scheduling_preemption_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ReplayConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.async_scheduling, bool):
            raise ReplayConfigError(f"async_scheduling must be true or false, got {self.async_scheduling!r}")
        if self.policy not in ("fcfs", "priority"):
            raise ReplayConfigError(f"policy must be 'fcfs' or 'priority', got {self.policy!r}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            # vLLM's SchedulerConfig refuses this too: an unchunked prompt must fit in one step.
            raise ReplayConfigError(
                "with chunked prefill disabled, max_num_batched_tokens "
                f"({self.max_num_batched_tokens}) must be >= max_model_len ({self.max_model_len})"
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ReplayConfigError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs ({self.max_num_seqs})"
            )
        if self.long_prefill_token_threshold > self.max_model_len:
            raise ReplayConfigError(
                f"long_prefill_token_threshold ({self.long_prefill_token_threshold}) cannot exceed "
                f"max_model_len ({self.max_model_len})"
            )

    @property
    def pool_tokens(self) -> int:
        return self.radix_pool_tokens or self.num_blocks * self.block_size

    def scheduler_kwargs(self) -> dict:
        """The SchedulerConfig fields ours and vLLM's spell the same way, for the runners."""
        return {
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_model_len": self.max_model_len,
            "enable_chunked_prefill": self.enable_chunked_prefill,
            "long_prefill_token_threshold": self.long_prefill_token_threshold,
            "policy": self.policy,
        }

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ReplayConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ReplayConfigError(f"unknown config key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "ReplayConfig":
        path = Path(path)
        if not path.is_file():
            raise ReplayConfigError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReplayConfigError(f"{path}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ReplayConfigError(f"{path}: expected a JSON object of config keys")
        return cls.from_dict(data)
