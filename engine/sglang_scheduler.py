"""The scheduler of cache_mode "sglang": SGLang's event loop, not vLLM's.

Mirrors: sglang.srt.managers.scheduler:Scheduler.get_next_batch_to_run (sglang 0.5.23)
Each step runs either a prefill (extend) batch or a decode batch, never both (mixed chunked
prefill is off by default in SGLang): if the waiting queue can admit anything under
PrefillAdder's budgets (engine/schedule_policy.py), the step is that prefill; otherwise every
running request decodes one token, retracting requests first when the pool cannot hold the next
token. Finished prefills publish their prompt to the radix tree at once (checkpoint), so a
request admitted one step later already hits it. The step's SchedulerOutput has the same shape
as the vLLM-mode scheduler's, so the model runner and engine loop are shared.

Policy "fcfs" runs SGLang's default order, "lpm" (longest cached prefix first); policy "priority"
runs SGLang's "fcfs" with --enable-priority-scheduling and --schedule-low-priority-values-first
(vLLM's order: smaller value first): the waiting queue sorted by priority then queue entry, and
priority preemption, on by default with it (scheduler.py:1468-1472): a request that finds the
batch full preempts running requests whose priority is lower by more than
priority_scheduling_preemption_threshold (10 unless given), which go back to the waiting queue.

Deliberate differences from SGLang 0.5.23 (named so the replay report can name them too):
- no overlap scheduling (the live CPU server runs with --disable-overlap-schedule too); a constrained
  request's mask is filled while the forward runs, as on the vLLM loop (engine.structured_output.overlap);
- no mixed chunked prefill (SGLang's --enable-mixed-chunk, off by default);
- a priority preemption that takes several requests requeues them in victim order; SGLang's in a
  set's order (by object address, managers/schedule_policy.py:1762-1777), so their waiting order may differ;
- no abort of the last request when even it cannot decode (a replay's workload is validated to fit the pool);
- request rows (ReqToTokenPool) are never the binding limit; max_num_seqs (max_running_requests) is.
"""
from __future__ import annotations

import time

from engine.config import CacheConfig, SchedulerConfig
from engine.outputs import EngineCoreOutput, ModelRunnerOutput, SchedulerOutput
from engine.request import Request, RequestStatus
from engine.schedule_policy import (
    PRIORITY_SCHEDULING_PREEMPTION_THRESHOLD,
    RETRACT_DECODE_STEPS,
    AddReqResult,
    NewTokenRatio,
    PrefillAdder,
    WaitingPrefixRefresh,
    calc_priority,
)
from engine.sglang_batch import Entry, WaitingView, batch_output
from engine.sglang_kv import SglangKV
from engine.structured_output.manager import GrammarOutput, StructuredOutputManager
from engine.structured_output.scheduling import sampling_ids
from engine.structured_output.sglang_grammar import GrammarQueue


class SglangScheduler:
    """Same public surface as engine.scheduler.Scheduler (add_request / schedule / update_from_output)."""

    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig, num_blocks: int,
                 priority_scheduling_preemption_threshold: int = PRIORITY_SCHEDULING_PREEMPTION_THRESHOLD,
                 structured_output_manager: StructuredOutputManager | None = None) -> None:
        if scheduler_config.policy not in ("fcfs", "priority"):
            raise ValueError(f"cache_mode 'sglang' runs policy 'fcfs' (SGLang's lpm) or 'priority', got {scheduler_config.policy!r}")
        # Scheduler.__init__ (scheduler.py:487) and init_schedule_policy (:1468-1472): preemption
        # comes with priority scheduling unless --disable-priority-preemption.
        self.enable_priority_scheduling = self.enable_priority_preemption = scheduler_config.policy == "priority"
        self.prefix_refresh = WaitingPrefixRefresh() if self.enable_priority_scheduling else None
        # --priority-scheduling-preemption-threshold (Scheduler.__init__, scheduler.py:494-496), 10 by default.
        self.priority_scheduling_preemption_threshold = priority_scheduling_preemption_threshold
        self.scheduler_config = scheduler_config
        # Constrained requests wait for their grammar outside the waiting queue (SGLang's GrammarManager).
        self.structured_output_manager = structured_output_manager
        self.grammar_queue = GrammarQueue(structured_output_manager) if structured_output_manager is not None else None
        self.cache_config = cache_config
        self.block_size = cache_config.block_size
        self.max_model_len = scheduler_config.max_model_len
        self.kv = SglangKV(num_blocks, cache_config.block_size, cache_config.enable_prefix_caching)
        self.chunked_prefill_size = (
            scheduler_config.max_num_batched_tokens if scheduler_config.enable_chunked_prefill else None
        )
        self.requests: dict[str, Request] = {}
        self.entries: dict[str, Entry] = {}
        self.waiting_queue: list[Entry] = []
        self.running_batch: list[Entry] = []
        self.batch_is_full = False
        self.chunked_req: Entry | None = None
        self.last_extend: list[Entry] | None = None  # the previous step's prefill batch, merged next step
        self.new_token_ratio = NewTokenRatio()
        self.retracted_this_step: list[str] = []
        self.finished_req_ids: set[str] = set()
        self.current_step = 0
        self._clock_ticks = 0
        self._retract_remaining = 0
        self._queue_entries = 0

    # -- the views the engine and replay read (named as engine.scheduler.Scheduler's) ----------

    @property
    def running(self) -> list[Request]:
        """Every request holding KV: the running batch, the prefill batch that joins it at the next
        step, then the request being prefilled in chunks."""
        extend = [e for e in self.last_extend or [] if e is not self.chunked_req and e not in self.running_batch]
        entries = self.running_batch + extend + ([self.chunked_req] if self.chunked_req is not None else [])
        return [e.request for e in entries if not e.request.is_finished]

    @property
    def waiting(self) -> "WaitingView":
        return WaitingView(e.request for e in self.waiting_queue)

    def get_request_counts(self) -> tuple[int, int]:
        return len(self.running), len(self.waiting_queue)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def num_free_blocks(self) -> int:
        return self.kv.available_and_evictable() // self.block_size

    def add_request(self, request: Request) -> None:
        # Mirrors: sglang.srt.managers.scheduler:Scheduler._add_request_to_queue (sglang 0.5.23)
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        self.requests[request.request_id] = request
        entry = self.entries[request.request_id] = Entry(request, self._max_new_tokens(request))
        if self.grammar_queue is None or not self.grammar_queue.hold(entry):
            self._add_to_queue(entry)

    def _add_to_queue(self, entry: Entry) -> None:
        # Mirrors: sglang.srt.managers.scheduler:Scheduler._add_request_to_queue (sglang 0.5.23)
        # An arrival, a retraction and a priority preemption all enter here and restamp the entry
        # time (ReqTimeStats.set_wait_queue_entry_time, observability/req_time_stats.py:776), the
        # tie-break of priority order.
        self.waiting_queue.append(entry)
        self._queue_entries += 1
        entry.wait_queue_entry_time = self._queue_entries

    def _max_new_tokens(self, request: Request) -> int:
        """max_tokens clipped so the request fits the context and an empty pool (its SamplingParams,
        perhaps shared with other requests, stay as they are).

        Mirrors: sglang.srt.managers.scheduler:Scheduler.init_req_max_new_tokens (sglang 0.5.23)
        (sglang/srt/managers/scheduler.py:2693-2740 Scheduler.init_req_max_new_tokens, with
        sglang/srt/mem_cache/allocator/base.py:88-105 BaseTokenToKVPoolAllocator.max_new_tokens_for_memory)
        """
        input_len, page = request.num_prompt_tokens, self.block_size
        capacity = (self.kv.num_pages - 1) * page  # max_total_num_tokens
        max_req_len = min(self.max_model_len - 1, capacity - 1)  # TpModelWorker.get_worker_info (tp_worker.py:568)
        max_new = max(0, min(request.sampling_params.max_tokens, max_req_len - input_len - 1))
        paged_input = -(-input_len // page) * page
        return max(0, min(max_new, capacity - paged_input - page - 1))

    # -- the step ---------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        # Mirrors: sglang.srt.managers.scheduler:Scheduler.get_next_batch_to_run (sglang 0.5.23)
        self.current_step += 1
        self.retracted_this_step = []
        if self.chunked_req is not None and self.chunked_req.kv.extend_end > self.chunked_req.kv.prefix_len:
            self._stash_chunked_request(self.chunked_req)
        if self.last_extend is not None:
            merged = [e for e in self.last_extend if not e.request.is_finished and e is not self.chunked_req]
            if len(merged) < len(self.last_extend):
                self.batch_is_full = False
            if merged and not self.running_batch:
                # An empty running batch is replaced by the prefill batch, a new ScheduleBatch whose
                # batch_is_full is False (scheduler.py:3958 `running_batch = last_batch`).
                self.batch_is_full = False
            self.running_batch += [e for e in merged if e not in self.running_batch]
            self.last_extend = None
        before = len(self.running_batch)
        self.running_batch = [e for e in self.running_batch if not e.request.is_finished]
        if len(self.running_batch) < before:
            self.batch_is_full = False

        if self.grammar_queue is not None:  # _get_new_batch_prefill_raw's first step (scheduler.py:4084-4087)
            for entry in self.grammar_queue.take_ready():
                self._add_to_queue(entry)
        prefill = self._get_new_batch_prefill()
        if prefill is not None:
            self.last_extend = prefill
            return self._output(prefill, extend=True)
        decode = self._update_running_batch() if self.running_batch else []
        if not decode and not self.requests:
            self.new_token_ratio.current = self.new_token_ratio.init  # on_idle's reset (scheduler.py:5241)
        return self._output(decode, extend=False)

    def _stash_chunked_request(self, entry: Entry) -> None:
        # Mirrors: sglang.srt.managers.scheduler:Scheduler.stash_chunked_request (sglang 0.5.23)
        self.kv.checkpoint_unfinished(entry.kv, entry.fill_ids(), entry.request.num_prompt_tokens)

    def _num_allocatable_reqs(self, running_bs: int) -> int:
        # Mirrors: sglang.srt.managers.scheduler:Scheduler.get_num_allocatable_reqs (sglang 0.5.23)
        # SGLang sizes max_running_requests (and as many request rows) at most half the pool in tokens
        # (sglang/srt/mem_cache/kv_cache_configurator.py:3119-3172 KVCacheConfigurator.resolve_max_num_reqs); with one row per
        # running request the rows never bind before this does.
        capacity = (self.kv.num_pages - 1) * self.block_size
        return min(self.scheduler_config.max_num_seqs, capacity // 2) - running_bs

    def _get_new_batch_prefill(self) -> list[Entry] | None:
        # Mirrors: sglang.srt.managers.scheduler:Scheduler._get_new_batch_prefill_raw (sglang 0.5.23)
        if self.enable_priority_preemption or not self.running_batch:
            self.batch_is_full = False  # reset to try preemption with a prefill adder (:4090-4096)
        if (self.batch_is_full or not self.waiting_queue) and self.chunked_req is None:
            return None
        running_bs = len(self.running_batch)
        if (self._num_allocatable_reqs(running_bs) <= 0 and self.chunked_req is None
                and not self.enable_priority_preemption):
            self.batch_is_full = True
            return None
        calc_priority(self.waiting_queue, self.kv, self._tick, self.prefix_refresh)
        adder = PrefillAdder(self.kv, self.running_batch, self.new_token_ratio.current,
                             self.scheduler_config.max_num_batched_tokens, self.chunked_prefill_size)
        if self.chunked_req is not None:
            self.chunked_req = adder.add_chunked_req(self.chunked_req)
        for entry in self.waiting_queue:
            if adder.budget_state() == AddReqResult.OTHER:
                break
            if len(adder.can_run_list) >= self._num_allocatable_reqs(len(self.running_batch)):
                self.batch_is_full = True
            if self.batch_is_full and not (self.enable_priority_preemption and adder.preempt_to_schedule(
                    entry, self.running_batch, self.priority_scheduling_preemption_threshold, self._release_preempted)):
                break
            # Req.init_next_round_input (schedule_batch.py:1692): match all tokens but the last.
            self.kv.match(entry.kv, entry.fill_ids()[:-1], next_round=True)
            entry.untruncated_fill_len = len(entry.fill_ids())
            result = adder.add_one_req(entry)
            if result != AddReqResult.CONTINUE:
                if result == AddReqResult.NO_TOKEN:
                    self.batch_is_full = bool(adder.can_run_list) or bool(self.running_batch)
                break
        can_run = adder.can_run_list
        if not can_run:
            for entry in adder.preempt_list:  # released already: requeued though nothing was admitted
                self._add_to_queue(entry)
            return None
        self.waiting_queue = [e for e in self.waiting_queue if e not in can_run]
        for entry in adder.preempt_list:
            self._add_to_queue(entry)
        if adder.new_chunked_req is not None:
            self.chunked_req = adder.new_chunked_req
        # ScheduleBatch.prepare_for_extend -> alloc_for_extend (schedule_batch.py:2847).
        self.kv.alloc_for_extend([e.kv for e in can_run], [e.kv.extend_end - e.kv.prefix_len for e in can_run])
        return can_run

    def _update_running_batch(self) -> list[Entry]:
        # Mirrors: sglang.srt.managers.scheduler:Scheduler.update_running_batch (sglang 0.5.23)
        batch = self.running_batch
        initial_bs = len(batch)
        if not self.kv.check_decode_capacity([e.kv for e in batch]):
            retracted = self._retract_decode()
            self.new_token_ratio.current = NewTokenRatio.after_retract(self.running_batch)
            for entry in retracted:
                self._add_to_queue(entry)  # _add_request_to_queue(is_retracted=True)
        else:
            self.new_token_ratio.decay_step()
        if len(self.running_batch) < initial_bs:
            self.batch_is_full = False
        # ScheduleBatch.prepare_for_decode -> alloc_for_decode (schedule_batch.py:3736).
        self.kv.alloc_for_decode([e.kv for e in self.running_batch])
        return list(self.running_batch)

    def _retract_decode(self) -> list[Entry]:
        # Mirrors: sglang.srt.managers.schedule_batch:ScheduleBatch.retract_decode (sglang 0.5.23)
        batch = self.running_batch
        # _get_decode_retraction_order: keep the most decoded (then shortest prompt); retract from the end.
        order = sorted(range(len(batch)), key=lambda i: (batch[i].request.num_output_tokens,
                                                        -batch[i].request.num_prompt_tokens), reverse=True)
        retracted = []
        first = True
        while first or not self.kv.check_decode_capacity([batch[i].kv for i in order]):
            if len(order) == 1:
                break
            first = False
            entry = batch[order.pop()]
            self._retract_remaining = len(order)
            self._preempt_request(entry.request, time.monotonic())
            retracted.append(entry)
        # filter_batch(keep_indices=sorted_indices) keeps the retraction order, not the batch's.
        self.running_batch = [batch[i] for i in order]
        return retracted

    def _release_preempted(self, entry: Entry, remaining: int) -> None:
        # Mirrors: sglang.srt.managers.schedule_batch:ScheduleBatch.release_req (sglang 0.5.23)
        # (called by PrefillAdder.preempt_to_schedule for each running request it preempts)
        self._retract_remaining = remaining
        self._preempt_request(entry.request, time.monotonic())

    def _preempt_request(self, request: Request, timestamp: float) -> None:
        """One retraction: free the request's KV (none of it published), back to waiting later.

        Mirrors: sglang.srt.managers.schedule_batch:release_req (sglang 0.5.23)
        Named as the vLLM-mode scheduler's preemption, which the engine's tests and traces watch.
        """
        entry = self.entries[request.request_id]
        self.kv.retract(entry.kv, self._retract_remaining, RETRACT_DECODE_STEPS)
        entry.retracted = True
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        request.num_computed_tokens = 0
        self.retracted_this_step.append(request.request_id)

    @property
    def kv_cache_manager(self) -> SglangKV:
        return self.kv

    def _tick(self) -> float:
        self._clock_ticks += 1
        return float(self._clock_ticks)

    def _output(self, batch: list[Entry], extend: bool) -> SchedulerOutput:
        output = batch_output(batch, extend, self.block_size, self.current_step,
                              set(self.retracted_this_step), self.finished_req_ids)
        self.finished_req_ids = set()
        return output

    def update_from_output(self, scheduler_output: SchedulerOutput,
                           model_runner_output: ModelRunnerOutput) -> list[EngineCoreOutput]:
        # Mirrors: sglang.srt.managers.scheduler_components.batch_result_processor:SchedulerBatchResultProcessor.process_batch_result_prefill (sglang 0.5.23)
        # and process_batch_result_decode: append the token, check finish, then release_kv_cache
        # (finished) or checkpoint_kv_cache (a prefill that goes on to decode).
        index_of = {rid: i for i, rid in enumerate(model_runner_output.req_ids)}
        extend = self.last_extend is not None and any(
            e.request.request_id in scheduler_output.num_scheduled_tokens for e in self.last_extend)
        outputs = []
        for rid in scheduler_output.num_scheduled_tokens:
            entry = self.entries.get(rid)
            if entry is None or entry.request.is_finished:
                continue
            if extend and entry is self.chunked_req:
                continue  # a middle chunk samples nothing; it is stashed at the next step
            request = entry.request
            token_ids = list(model_runner_output.sampled_token_ids[index_of[rid]])[:1]
            if not token_ids:
                continue
            request.append_output_token_ids(token_ids)
            if self.grammar_queue is not None and request.use_structured_output \
                    and not self.grammar_queue.accept_token(request, token_ids[0]):
                request.status = RequestStatus.FINISHED_ERROR
            if request.is_finished or self._check_finish(request):
                self.kv.release(entry.kv, entry.fill_ids(), request.num_prompt_tokens, checkpoint=True)
                self._free_request(request)
            elif extend:
                self.kv.checkpoint_unfinished(entry.kv, entry.fill_ids(), request.num_prompt_tokens)
            outputs.append(EngineCoreOutput(request_id=rid, new_token_ids=token_ids,
                                            finish_reason=request.get_finish_reason(),
                                            stop_reason=request.stop_reason,
                                            num_cached_tokens=max(request.num_cached_tokens, 0)))
        if self.grammar_queue is not None and self.grammar_queue.errors:
            errors, self.grammar_queue.errors = self.grammar_queue.errors, {}
            for request in self.finish_requests(list(errors), RequestStatus.FINISHED_ERROR):
                request.stop_reason = errors[request.request_id]
                outputs.append(EngineCoreOutput(request.request_id, [], request.get_finish_reason(), request.stop_reason))
        return outputs

    def get_grammar_bitmask(self, scheduler_output: SchedulerOutput) -> GrammarOutput | None:
        """One row per structured request that samples this step (SamplingBatchInfo.update_regex_vocab_mask)."""
        if self.structured_output_manager is None:
            return None
        return self.structured_output_manager.grammar_bitmask(self.requests, sampling_ids(self.requests, scheduler_output))

    def _check_finish(self, request: Request) -> bool:
        # Mirrors: sglang.srt.managers.schedule_batch:Req.update_finish_state (sglang 0.5.23)
        params = request.sampling_params
        last = request.output_token_ids[-1]
        if request.num_output_tokens >= self.entries[request.request_id].max_new_tokens:
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
            return True
        if not params.ignore_eos and last == request.eos_token_id or last in params.stop_token_ids:
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = last if last in params.stop_token_ids else None
            return True
        if request.num_tokens >= self.max_model_len:
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
            return True
        if self.grammar_queue is not None and self.grammar_queue.is_terminated(request):  # FINISH_MATCHED_TOKEN
            request.status = RequestStatus.FINISHED_STOPPED
            return True
        return False

    def _free_request(self, request: Request) -> None:
        self.finished_req_ids.add(request.request_id)
        del self.requests[request.request_id]
        del self.entries[request.request_id]

    def finish_requests(self, request_ids: str | list[str], finished_status: RequestStatus) -> list[Request]:
        """Abort from outside the step (Scheduler.abort_request in SGLang)."""
        ids = [request_ids] if isinstance(request_ids, str) else request_ids
        done = []
        for rid in ids:
            entry = self.entries.get(rid)
            if entry is None:
                continue
            entry.request.status = finished_status
            self.waiting_queue = [e for e in self.waiting_queue if e is not entry]
            if self.grammar_queue is not None:
                self.grammar_queue.remove(entry)
            self.running_batch = [e for e in self.running_batch if e is not entry]
            if self.chunked_req is entry:
                self.chunked_req = None
            self.kv.release(entry.kv, entry.fill_ids(), entry.request.num_prompt_tokens, checkpoint=False)
            self._free_request(entry.request)
            done.append(entry.request)
        return done
