"""Replay runner for our scheduler (engine/scheduler.py) and block manager."""
from __future__ import annotations

from engine.async_scheduler import AsyncScheduler
from engine.config import CacheConfig, SchedulerConfig, SpeculativeConfig
from engine.outputs import DraftTokenIds, ModelRunnerOutput, SchedulerOutput
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from tracer.replay.config import ReplayConfig
from tracer.replay.runners.base import V1SchedulerRunner
from tracer.replay.workload import WorkloadRequest


class MiniRunner(V1SchedulerRunner):
    name = "mini"
    # engine/request_queue.py: FCFS deque or priority heap, reordered only by adds and pops.
    waiting_order_follows_membership = True

    ignore_eos = True  # forced outputs end each request at exactly max_tokens

    def __init__(self, config: ReplayConfig) -> None:
        super().__init__(config)
        cache_config = CacheConfig(
            block_size=config.block_size, num_blocks=config.num_blocks, enable_prefix_caching=config.enable_prefix_caching
        )
        self.scheduler = self.make_scheduler(config, cache_config)
        self._all: dict[str, Request] = {}

    def make_scheduler(self, config: ReplayConfig, cache_config: CacheConfig) -> Scheduler:
        # The drafts are forced (tracer/replay/speculation.py): the n-gram sizes are never used.
        method = "ngram_gpu" if config.async_scheduling else "ngram"  # as engine.config.check_speculative_config allows
        spec = SpeculativeConfig(method=method, num_speculative_tokens=config.num_speculative_tokens) if config.num_speculative_tokens else None
        scheduler_class = AsyncScheduler if config.async_scheduling else Scheduler
        return scheduler_class(SchedulerConfig(**config.scheduler_kwargs()), cache_config, config.num_blocks,
                               speculative_config=spec)

    def add_request(self, request: WorkloadRequest, arrival_time: float) -> None:
        engine_request = Request(
            request_id=request.id,
            prompt_token_ids=list(request.prompt_token_ids),
            sampling_params=SamplingParams(max_tokens=request.max_tokens, ignore_eos=self.ignore_eos, temperature=0.0),
            arrival_time=arrival_time,
            priority=request.priority,
        )
        self._all[request.id] = engine_request
        self.scheduler.add_request(engine_request)

    def schedule(self) -> SchedulerOutput:
        return self.scheduler.schedule()

    def update_from_output(self, scheduler_output: SchedulerOutput, sampled: dict[str, list[int]]) -> dict[str, str]:
        req_ids = list(scheduler_output.num_scheduled_tokens)
        output = ModelRunnerOutput(req_ids=req_ids, sampled_token_ids=[sampled[r] for r in req_ids])
        outputs = self.scheduler.update_from_output(scheduler_output, output)
        return {o.request_id: o.finish_reason for o in outputs if o.finish_reason is not None}

    def update_draft_token_ids(self, req_ids: list[str], draft_token_ids: list[list[int]]) -> None:
        if not hasattr(self.scheduler, "update_draft_token_ids"):
            super().update_draft_token_ids(req_ids, draft_token_ids)
        self.scheduler.update_draft_token_ids(DraftTokenIds(req_ids=req_ids, draft_token_ids=draft_token_ids))

    def num_free_blocks(self) -> int:
        return self.scheduler.kv_cache_manager.get_num_free_blocks()
