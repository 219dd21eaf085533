"""Continuous batching scheduler.

Mirrors: vllm.v1.core.sched.scheduler:Scheduler (vllm 0.33.0), the synchronous one.

There is no prefill phase or decode phase: every step, each request gets tokens so that its
num_computed_tokens catches up with num_tokens, under a token budget. That one rule gives
continuous batching, chunked prefill and prefix caching. Running requests go first; waiting
requests are admitted only if nothing was preempted this step.

Deliberate differences from vLLM 0.33 (named so the replay report can name them too):
- speculative decoding with n-gram drafts only (no lookahead slots, no dynamic k), and not with
  async scheduling; no encoder inputs, LoRA or KV connectors;
- synchronous scheduling here; vLLM 0.33's default, AsyncScheduler (one step of lookahead with
  output placeholders), is engine.async_scheduler.AsyncScheduler, a subclass of this one (replay
  drives either pair: ReplayConfig.async_scheduling);
- the KV-cache watermark is fixed at 0 (vLLM's default).
"""
from __future__ import annotations

import time

from engine.block_pool import update_block_hashes
from engine.config import CacheConfig, SchedulerConfig, SpeculativeConfig
from engine.kv_cache_manager import KVCacheManager
from engine.kv_manager import KVManager
from engine.outputs import (DraftTokenIds, EngineCoreOutput, ModelRunnerOutput, NewRequestData,
                            SchedulerOutput)
from engine.request import Request, RequestStatus
from engine.request_queue import create_request_queue
from engine.sched_utils import check_stop, make_cached_request_data, new_block_ids_of
from engine.spec_decode import scheduling as spec
from engine.structured_output import scheduling as so
from engine.structured_output.manager import GrammarOutput, StructuredOutputManager


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig, num_blocks: int,
                 structured_output_manager: StructuredOutputManager | None = None, *,
                 speculative_config: SpeculativeConfig | None = None) -> None:
        self.scheduler_config = scheduler_config
        self.cache_config = cache_config
        self.block_size = cache_config.block_size
        self.max_model_len = scheduler_config.max_model_len
        self.policy = scheduler_config.policy
        if scheduler_config.cache_mode != "vllm":
            # SGLang's loop is a different scheduler, not a branch of this one: engine.sglang_scheduler.
            raise ValueError(f"Scheduler is vLLM's loop; cache_mode {scheduler_config.cache_mode!r} runs SglangScheduler")
        # The scheduler calls only the KVManager protocol.
        self.kv_cache_manager: KVManager = KVCacheManager(
            num_blocks=num_blocks,
            block_size=cache_config.block_size,
            enable_caching=cache_config.enable_prefix_caching,
            max_model_len=scheduler_config.max_model_len,
        )
        self.requests: dict[str, Request] = {}
        self.waiting = create_request_queue(scheduler_config.policy)
        self.running: list[Request] = []
        # Finished / preempted since the previous step: the model runner drops their state.
        self.finished_req_ids: set[str] = set()
        self.preempted_req_ids: set[str] = set()
        self.current_step = 0
        # Speculative decoding (vLLM: VllmConfig.num_speculative_tokens / num_lookahead_tokens).
        self.num_spec_tokens, self.num_lookahead_tokens, self.spec_decoding_stats = spec.scheduler_state(speculative_config)
        # Structured output (vLLM passes its StructuredOutputManager in the same way).
        self.structured_output_manager = structured_output_manager
        self.grammar_compile_error_reqs: dict[str, str] = {}

    # -- queue management ---------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler.add_request (vllm 0.33.0)
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        if self.cache_config.enable_prefix_caching:
            update_block_hashes(request, self.block_size)
        self.waiting.add_request(request)
        self.requests[request.request_id] = request

    def finish_requests(self, request_ids: str | list[str], finished_status: RequestStatus) -> list[Request]:
        """Finish requests from outside the step (abort, stop string).

        Mirrors: vllm.v1.core.sched.scheduler:Scheduler.finish_requests (vllm 0.33.0)
        """
        assert RequestStatus.is_finished(finished_status)
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        finished = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove_request(request)
            request.status = finished_status
            self._free_request(request)
            finished.append(request)
        return finished

    def get_request_counts(self) -> tuple[int, int]:
        return len(self.running), len(self.waiting)

    def has_unfinished_requests(self) -> bool:
        return bool(self.running) or bool(len(self.waiting))

    # -- the step -----------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler.schedule (vllm 0.33.0)
        self.current_step += 1
        scheduled_new_reqs: list[Request] = []
        scheduled_resumed_reqs: list[Request] = []
        scheduled_running_reqs: list[Request] = []
        preempted_reqs: list[Request] = []
        num_scheduled_tokens: dict[str, int] = {}
        # The blocks each running request got this step (vLLM: req_to_new_blocks); the model
        # runner appends them to the table it holds.
        new_block_ids: dict[str, list[int] | None] = {}
        scheduled_spec_decode_tokens: dict[str, list[int]] = {}
        prefill_scheduled = False  # a running request in the batch is still in its prompt
        token_budget = self.scheduler_config.max_num_batched_tokens
        scheduled_timestamp = time.monotonic()

        # The threshold stops a long prefill from starving others; alone, it may use everything.
        num_running, num_waiting = self.get_request_counts()
        long_prefill_threshold = (
            self.scheduler_config.long_prefill_token_threshold if num_running + num_waiting > 1 else 0
        )

        # First, the RUNNING requests.
        req_index = 0
        while req_index < len(self.running) and token_budget > 0:
            request = self.running[req_index]
            if (
                request.num_output_placeholders > 0
                and request.num_computed_tokens + 2 - request.num_output_placeholders
                >= request.num_prompt_tokens + request.sampling_params.max_tokens
            ):
                # Async scheduling: the step in flight samples the last token max_tokens allows;
                # one more step would be wasted (vllm/v1/core/sched/scheduler.py:799-815 Scheduler.schedule).
                req_index += 1
                continue
            # Placeholders (async scheduling; 0 otherwise) count the tokens in flight as known;
            # num_tokens_with_spec: the drafts proposed after the last step are scheduled too.
            num_new_tokens = request.num_tokens_with_spec + request.num_output_placeholders - request.num_computed_tokens
            if 0 < long_prefill_threshold < num_new_tokens:
                num_new_tokens = long_prefill_threshold
            num_new_tokens = min(num_new_tokens, token_budget)
            # Leave room for the token this step samples.
            num_new_tokens = min(num_new_tokens, self.max_model_len - request.num_computed_tokens - 1)
            if num_new_tokens <= 0:
                req_index += 1
                continue

            while True:
                new_blocks = self.kv_cache_manager.allocate_slots(
                    request, num_new_tokens, num_lookahead_tokens=self.num_lookahead_tokens
                )
                if new_blocks is not None:
                    break
                # Out of blocks: preempt the lowest-priority running request and retry.
                if self.policy == "priority":
                    victim = max(self.running, key=lambda r: (r.priority, r.arrival_time))
                    victim_index = self.running.index(victim)
                    del self.running[victim_index]
                    if victim_index < req_index:
                        req_index -= 1
                    if victim in scheduled_running_reqs:
                        scheduled_running_reqs.remove(victim)
                        token_budget += num_scheduled_tokens.pop(victim.request_id)
                        new_block_ids.pop(victim.request_id)
                        scheduled_spec_decode_tokens.pop(victim.request_id, None)
                else:
                    victim = self.running.pop()
                self._preempt_request(victim, scheduled_timestamp)
                preempted_reqs.append(victim)
                if victim is request:
                    break

            if new_blocks is None:
                if self.policy == "priority" and request.status == RequestStatus.PREEMPTED:
                    # It preempted itself; higher-priority requests after it may still fit.
                    continue
                break

            scheduled_running_reqs.append(request)
            prefill_scheduled |= request.is_prefill_chunk
            num_scheduled_tokens[request.request_id] = num_new_tokens
            new_block_ids[request.request_id] = new_block_ids_of(self.kv_cache_manager, request, len(new_blocks))
            token_budget -= num_new_tokens
            req_index += 1
            if request.spec_token_ids:
                spec.schedule_drafts(request, num_new_tokens, scheduled_spec_decode_tokens)

        # Then the WAITING requests, unless memory pressure forced a preemption this step.
        if not preempted_reqs:
            # Requests still blocked (a grammar compiling) step aside this step (vLLM: skip_request).
            step_skipped_waiting: list[Request] = []
            while token_budget > 0 and len(self.waiting):
                if len(self.running) >= self.scheduler_config.max_num_seqs:
                    break
                request = self.waiting.peek_request()
                if not so.handle_blocked_waiting_request(request, self.grammar_compile_error_reqs):
                    step_skipped_waiting.append(self.waiting.pop_request())
                    continue

                did_prefix_cache_lookup = request.num_computed_tokens == 0
                if did_prefix_cache_lookup:
                    new_computed_blocks, num_computed_tokens = self.kv_cache_manager.get_computed_blocks(request)
                    if request.num_preemptions <= 0:
                        request.num_cached_tokens = num_computed_tokens
                else:
                    new_computed_blocks, num_computed_tokens = [], request.num_computed_tokens
                num_new_local_computed_tokens = num_computed_tokens - request.num_computed_tokens

                # num_tokens, not num_prompt_tokens: a resumed request recomputes its outputs too.
                num_new_tokens = request.num_tokens - num_computed_tokens
                pad_spec_decode = spec.pads_admission(
                    self.num_spec_tokens, num_new_tokens, num_computed_tokens, prefill_scheduled,
                    bool(scheduled_running_reqs or num_computed_tokens > 0), self.max_model_len,
                )
                if pad_spec_decode:
                    if 1 + self.num_spec_tokens > token_budget:
                        break
                    num_new_tokens = 1 + self.num_spec_tokens
                if 0 < long_prefill_threshold < num_new_tokens:
                    num_new_tokens = long_prefill_threshold
                if not self.scheduler_config.enable_chunked_prefill and num_new_tokens > token_budget:
                    break
                num_new_tokens = min(num_new_tokens, token_budget)

                new_blocks = self.kv_cache_manager.allocate_slots(
                    request,
                    num_new_tokens,
                    num_new_computed_tokens=num_new_local_computed_tokens,
                    new_computed_blocks=new_computed_blocks,
                    full_sequence_must_fit=True,  # vLLM: scheduler_reserve_full_isl (default True)
                )
                if new_blocks is None:
                    break  # waiting requests never preempt running ones

                self.waiting.pop_request()
                self.running.append(request)
                if request.status == RequestStatus.WAITING:
                    scheduled_new_reqs.append(request)
                else:
                    scheduled_resumed_reqs.append(request)
                num_scheduled_tokens[request.request_id] = num_new_tokens
                token_budget -= num_new_tokens
                request.status = RequestStatus.RUNNING
                request.num_computed_tokens = num_computed_tokens
                if pad_spec_decode:
                    scheduled_spec_decode_tokens[request.request_id] = spec.placeholder_drafts(self.num_spec_tokens)
                if did_prefix_cache_lookup:  # counted at admission, so lookups that did not fit are not
                    self.kv_cache_manager.record_prefix_cache_stats(request, num_new_local_computed_tokens)
            for request in reversed(step_skipped_waiting):
                self.waiting.prepend_request(request)

        total = sum(num_scheduled_tokens.values())
        assert total <= self.scheduler_config.max_num_batched_tokens
        assert len(self.running) <= self.scheduler_config.max_num_seqs

        # A new request is sent whole; running and resumed ones as a diff (vLLM's
        # _make_cached_request_data), built before _update_after_schedule advances their counters.
        get_block_ids = self.kv_cache_manager.get_block_ids
        output = SchedulerOutput(
            scheduled_new_reqs=[NewRequestData.from_request(r, get_block_ids(r.request_id)) for r in scheduled_new_reqs],
            scheduled_cached_reqs=make_cached_request_data(
                self.kv_cache_manager, scheduled_running_reqs, scheduled_resumed_reqs, new_block_ids
            ),
            num_scheduled_tokens=num_scheduled_tokens,
            total_num_scheduled_tokens=total,
            preempted_req_ids={r.request_id for r in preempted_reqs},
            finished_req_ids=self.finished_req_ids,
            step=self.current_step,
            scheduled_spec_decode_tokens=scheduled_spec_decode_tokens,
            num_spec_tokens_to_schedule=self.num_spec_tokens,
        )
        self._update_after_schedule(output)
        return output

    def get_grammar_bitmask(self, scheduler_output: SchedulerOutput) -> GrammarOutput | None:
        """The token bitmask of the step's structured requests that sample (not mid-prompt).

        Mirrors: vllm.v1.core.sched.scheduler:Scheduler.get_grammar_bitmask (vllm 0.33.0)
        """
        if self.structured_output_manager is None:
            return None
        return self.structured_output_manager.grammar_bitmask(self.requests, so.sampling_ids(self.requests, scheduler_output),
                                                              scheduler_output.scheduled_spec_decode_tokens)

    def _preempt_request(self, request: Request, timestamp: float) -> None:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler._preempt_request (vllm 0.33.0)
        assert request.status == RequestStatus.RUNNING, "only running requests can be preempted"
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.waiting.prepend_request(request)
        self.preempted_req_ids.add(request.request_id)

    def _update_after_schedule(self, scheduler_output: SchedulerOutput) -> None:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler._update_after_schedule (vllm 0.33.0); advancing
        # num_computed_tokens now lets the next step schedule the next prefill chunk at once.
        for request_id, num_tokens in scheduler_output.num_scheduled_tokens.items():
            request = self.requests[request_id]
            request.num_computed_tokens += num_tokens
            request.is_prefill_chunk = request.num_computed_tokens < request.num_tokens
        self.finished_req_ids = set()
        self.preempted_req_ids = set()

    def update_from_output(
        self, scheduler_output: SchedulerOutput, model_runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler.update_from_output (vllm 0.33.0)
        index_of = {req_id: i for i, req_id in enumerate(model_runner_output.req_ids)}
        outputs: list[EngineCoreOutput] = []
        stopped_running: set[Request] = set()
        for request_id in scheduler_output.num_scheduled_tokens:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue  # aborted while the step ran
            new_token_ids = list(model_runner_output.sampled_token_ids[index_of[request_id]])
            scheduled_spec_token_ids = scheduler_output.scheduled_spec_decode_tokens.get(request_id)
            if scheduled_spec_token_ids and new_token_ids:
                spec.roll_back_rejected(request, scheduled_spec_token_ids, new_token_ids, self.spec_decoding_stats)
            stopped = False
            if new_token_ids:
                new_token_ids, stopped = self._update_request_with_output(request, new_token_ids)
            if self.structured_output_manager is not None and request.use_structured_output and new_token_ids:
                stopped = so.advance_grammar(self.structured_output_manager, request, new_token_ids, stopped,
                                             self.max_model_len)
            if new_token_ids and self.cache_config.enable_prefix_caching:
                update_block_hashes(request, self.block_size)
                if self.num_spec_tokens:
                    spec.cache_accepted_blocks(self.kv_cache_manager, request)
            if stopped:
                self._free_request(request)
                stopped_running.add(request)
            if new_token_ids or stopped:
                outputs.append(
                    EngineCoreOutput(
                        request_id=request_id,
                        new_token_ids=new_token_ids,
                        finish_reason=request.get_finish_reason(),
                        stop_reason=request.stop_reason,
                        num_cached_tokens=max(request.num_cached_tokens, 0),
                    )
                )
        if stopped_running:
            self.running = [r for r in self.running if r not in stopped_running]
        if self.grammar_compile_error_reqs:
            errors, self.grammar_compile_error_reqs = self.grammar_compile_error_reqs, {}
            for request in self.finish_requests(list(errors), RequestStatus.FINISHED_ERROR):
                request.stop_reason = errors[request.request_id]
                outputs.append(EngineCoreOutput(request_id=request.request_id, new_token_ids=[],
                                                finish_reason=request.get_finish_reason(), stop_reason=request.stop_reason))
        return outputs

    def update_draft_token_ids(self, draft_token_ids: DraftTokenIds) -> None:
        """The drafts proposed after a step, for the next schedule (engine.spec_decode.scheduling)."""
        spec.update_draft_token_ids(self.requests, draft_token_ids, self.structured_output_manager)

    def _update_request_with_output(self, request: Request, new_token_ids: list[int]) -> tuple[list[int], bool]:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler._update_request_with_output (vllm 0.33.0)
        # Append the sampled tokens up to the first that stops the request.
        stopped = False
        for num_new, token_id in enumerate(new_token_ids, 1):
            request.append_output_token_ids([token_id])
            stopped = check_stop(request, self.max_model_len)
            if stopped:
                del new_token_ids[num_new:]
                break
        return new_token_ids, stopped

    def _free_request(self, request: Request) -> None:
        # Mirrors: vllm.v1.core.sched.scheduler:Scheduler._free_request (vllm 0.33.0)
        assert request.is_finished
        self.kv_cache_manager.free(request)
        self.finished_req_ids.add(request.request_id)
        del self.requests[request.request_id]
