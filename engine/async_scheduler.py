"""The scheduler of async scheduling: it runs one step ahead of the model, with output placeholders.

Mirrors: vllm.v1.core.sched.async_scheduler:AsyncScheduler (vllm 0.33.0)
Under vLLM 0.33's default (EngineCore.step_with_batch_queue, a batch queue of depth 2) step N+1 is
scheduled while step N runs, so the token step N samples is not known yet when N+1 is scheduled.
A request that step N samples for gets one output placeholder (num_output_placeholders): the
scheduler counts that token as known (num_tokens + num_output_placeholders), schedules it for
N+1, and the model runner fills in its id from step N's sampled tokens. When step N's output
arrives, update_from_output resolves the placeholder (_update_request_with_output).

What that changes, as in vLLM:
- a request that stops at step N (EOS, stop token) has already been scheduled for N+1; that
  step's output for it is dropped (update_from_output skips finished requests). max_tokens alone
  wastes no step: Scheduler.schedule skips a request whose in-flight step reaches it.
- a stop string or an abort seen after step N's output lands one step late the same way.
- a request preempted while a step of it is in flight: its placeholders are dropped and the
  in-flight share marked stale (num_stale_output_tokens); the stale token is still appended when it
  arrives (the resumed request recomputes it) but moves no counter
  (vllm/v1/core/sched/scheduler.py:1822-1836 Scheduler._preempt_request,
  vllm/v1/core/sched/scheduler.py:2316-2323 Scheduler.update_from_output).

With speculation ("ngram_gpu" only, engine.config.check_speculative_config) the scheduler never
sees a draft: a step that samples for a request counts 1 + its scheduled drafts as placeholders
and gives the request k placeholder drafts (-1) for the next schedule, as if every draft will be
accepted; the model runner puts the drafts it proposed in their place, trims the ones it has
none for and corrects the positions by what the step before really accepted
(engine/spec_decode/worker_drafts.py). When the step's output arrives one step later,
update_from_output takes the rejected drafts out of num_computed_tokens and of the placeholders
(vllm/v1/core/sched/scheduler.py:2346-2364 Scheduler.update_from_output).

Not here (our engine has none of them): structured output's deferred bitmask, pipeline-parallel
decode staggering.
"""
from __future__ import annotations

from engine.block_pool import update_block_hashes
from engine.outputs import EngineCoreOutput, ModelRunnerOutput, SchedulerOutput
from engine.request import Request, RequestStatus
from engine.scheduler import Scheduler


class AsyncScheduler(Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Read-only placeholder drafts for speculation (vLLM: _spec_token_placeholders).
        self._spec_token_placeholders: list[int] = [-1] * self.num_spec_tokens
        # The ids whose output in the update being applied is stale (set per update_from_output).
        self._stale_req_ids: set[str] = set()
        self._stopped_preempted: list[Request] = []

    def _update_after_schedule(self, scheduler_output: SchedulerOutput) -> None:
        # Mirrors: vllm.v1.core.sched.async_scheduler:AsyncScheduler._update_after_schedule (vllm 0.33.0)
        # (+ the in-flight count and is_prefill_chunk that vLLM's base class keeps,
        # vllm/v1/core/sched/scheduler.py:1856-1865 Scheduler._update_after_schedule).
        super()._update_after_schedule(scheduler_output)
        spec_decode_tokens = scheduler_output.scheduled_spec_decode_tokens
        # The latest number of drafts to schedule is the placeholders' length (vLLM re-makes the list).
        if len(self._spec_token_placeholders) != scheduler_output.num_spec_tokens_to_schedule:
            self._spec_token_placeholders = [-1] * scheduler_output.num_spec_tokens_to_schedule
        for req_id, num_scheduled in scheduler_output.num_scheduled_tokens.items():
            request = self.requests[req_id]
            # A preempted request is only readmitted once its stale output has drained (vLLM skips it
            # in the waiting loop,
            # vllm/v1/core/sched/scheduler.py:1084-1089 Scheduler.schedule); with a queue of depth 2 it always has.
            assert request.num_stale_output_tokens == 0, f"{req_id} scheduled with stale output in flight"
            request.num_in_flight_tokens += num_scheduled
            request.is_prefill_chunk = request.num_computed_tokens < request.num_tokens + request.num_output_placeholders
            if request.is_prefill_chunk:
                continue  # a chunk that stops short of the known tokens samples nothing
            # The step samples one token plus its scheduled drafts, all unknown until its output
            # arrives; the drafts for the next step are placeholders the runner fills in.
            request.num_output_placeholders += 1 + len(spec_decode_tokens.get(req_id, ()))
            if self.num_spec_tokens:
                request.spec_token_ids = self._spec_token_placeholders

    def _preempt_request(self, request: Request, timestamp: float) -> None:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler._preempt_request (vllm 0.33.0), its async part
        super()._preempt_request(request, timestamp)
        # The in-flight output is still delivered, but must not move the counters just reset.
        request.num_stale_output_tokens = request.num_in_flight_tokens
        request.num_output_placeholders = 0

    def update_from_output(
        self, scheduler_output: SchedulerOutput, model_runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler.update_from_output (vllm 0.33.0), the
        # in-flight and stale accounting at the top of its loop; the rest is
        # the synchronous update, with _update_request_with_output below.
        self._stale_req_ids = set()
        self._stopped_preempted = []
        for req_id, num_scheduled in scheduler_output.num_scheduled_tokens.items():
            request = self.requests.get(req_id)
            if request is None:
                continue  # finished (stopped or aborted) while this step ran
            request.num_in_flight_tokens -= num_scheduled
            if request.num_stale_output_tokens > 0:
                self._stale_req_ids.add(req_id)
                request.num_stale_output_tokens -= num_scheduled
                assert request.num_stale_output_tokens >= 0
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        # A preempted request stopped by its stale token sits in the waiting queue, not in running
        # (vLLM: stopped_preempted_reqs,
        # vllm/v1/core/sched/scheduler.py:2545-2548 Scheduler.update_from_output).
        for request in self._stopped_preempted:
            self.waiting.remove_request(request)
        return outputs

    def _update_request_with_output(self, request: Request, new_token_ids: list[int]) -> tuple[list[int], bool]:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler._update_request_with_output (vllm 0.33.0)
        is_stale = request.request_id in self._stale_req_ids
        status_before_stop = request.status
        num_new_tokens = len(new_token_ids)
        has_output_placeholders = request.num_output_placeholders > 0
        new_token_ids, stopped = super()._update_request_with_output(request, new_token_ids)
        if not is_stale and request.num_output_placeholders > 0:
            # Resolve every returned token, the ones trimmed at a stop too.
            request.num_output_placeholders -= num_new_tokens
            assert request.num_output_placeholders >= 0
        if stopped and status_before_stop == RequestStatus.PREEMPTED:
            self._stopped_preempted.append(request)
        if not is_stale and status_before_stop == RequestStatus.RUNNING and has_output_placeholders:
            # allocate_slots cached only blocks of known tokens; the placeholder's block is full now
            # (vllm/v1/core/sched/scheduler.py:2407-2415 Scheduler.update_from_output).
            if self.cache_config.enable_prefix_caching:
                # vLLM's Request hashes new full blocks as tokens are appended; ours after the
                # update (Scheduler.update_from_output), later than cache_blocks needs them.
                update_block_hashes(request, self.block_size)
                self.kv_cache_manager.cache_blocks(request, request.num_computed_tokens - request.num_in_flight_tokens)
        return new_token_ids, stopped
