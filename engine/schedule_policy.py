"""SGLang's admission policy: the waiting-queue order and the prefill budgets.

Mirrors: sglang.srt.managers.schedule_policy:SchedulePolicy, sglang.srt.managers.schedule_policy:PrefillAdder (sglang 0.5.23)
Kept: the "lpm" order (longest cached prefix first) with in-batch prefix caching (of several
waiting requests that share an uncached prefix, all but the first wait), FCFS beyond
WAITING_QUEUE_PREFIX_MATCH_MAX waiting requests, and PrefillAdder's token budgets: the pool's
free + evictable tokens minus what running requests may still decode (new_token_ratio of their
remaining max_new_tokens), the per-step input budget (max_prefill_tokens) and the chunk budget
(chunked_prefill_size), which truncates one request into a chunk. With priority scheduling
(SGLang's "fcfs" with --enable-priority-scheduling) the order is priority then queue entry, and a
request that finds the batch full may preempt running requests of a lower priority
(PrefillAdder.preempt_to_schedule). Left out (off in the configurations replay drives): the
ignore_eos path of a disabled tree
(add_one_req_ignore_eos), hybrid SWA / Mamba budgets, HiCache load-back, LoRA, dLLM, the
AMD-only tile budget and the prefill delayer.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Protocol

from engine.radix_cache import RadixCache
from engine.request import Request
from engine.sglang_kv import ReqKV, SglangKV

# Upstream's defaults (their environment variables unset):
# sglang/srt/managers/schedule_policy.py:137 WAITING_QUEUE_PREFIX_MATCH_MAX
WAITING_QUEUE_PREFIX_MATCH_MAX = 128
# sglang/srt/managers/schedule_policy.py:139 WAITING_PREFIX_REFRESH_INTERVAL
WAITING_PREFIX_REFRESH_INTERVAL = 32
# sglang/srt/managers/schedule_policy.py:110-112 IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD
IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD = 32
# sglang/srt/managers/schedule_policy.py:117-119 IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD
IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD = 32
# sglang/srt/managers/schedule_policy.py:89-91 CLIP_MAX_NEW_TOKENS
CLIP_MAX_NEW_TOKENS = 4096
# sglang/srt/environ.py:251-2179 Envs (SGLANG_INIT_NEW_TOKEN_RATIO and the three after it, lines 646-649);
# schedule_conservativeness 1.0.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
RETRACT_DECODE_STEPS = 20
# sglang/srt/arg_groups/fields/schedule.py:122-125 Schedule.priority_scheduling_preemption_threshold (the default)
PRIORITY_SCHEDULING_PREEMPTION_THRESHOLD = 10


class AddReqResult(enum.Enum):
    """Mirrors: sglang.srt.managers.schedule_policy:AddReqResult (sglang 0.5.23)"""

    CONTINUE = enum.auto()  # keep adding
    NO_TOKEN = enum.auto()  # the KV pool cannot take more
    OTHER = enum.auto()  # a step budget (input / chunk / batch size) is spent


class SglangRequest(Protocol):
    request: Request
    kv: ReqKV
    max_new_tokens: int  # the request's max_tokens as admission clipped it (Scheduler.init_req_max_new_tokens)
    wait_queue_entry_time: int  # when it last entered the waiting queue (a counter: only the order counts)
    untruncated_fill_len: int  # len(Req.full_untruncated_fill_ids) as last refreshed (init_next_round_input)

    def fill_ids(self) -> list[int]: ...


def remaining_max_new(entry: SglangRequest) -> int:
    return min(max(entry.max_new_tokens - entry.request.num_output_tokens, 0), CLIP_MAX_NEW_TOKENS)


class WaitingPrefixRefresh:
    """Under a cache-agnostic policy (fcfs), every 32nd ordering pass touches the waiting requests'
    cached prefixes, the head last, so that LRU evicts in reverse admission order.

    Mirrors: sglang.srt.managers.schedule_policy:SchedulePolicy._touch_waiting_prefixes (sglang 0.5.23)
    On by default (SGLANG_ENABLE_WAITING_PREFIX_REFRESH, line 645 of sglang/srt/environ.py:251-2179 Envs, with the default
    lru eviction); skipped for a disabled tree (RadixCache.supports_prefix_sharing, radix_cache.py:618).
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, waiting: list, kv: SglangKV) -> None:
        if not waiting or kv.tree.disable:
            return
        refresh = self.calls % WAITING_PREFIX_REFRESH_INTERVAL == 0
        self.calls += 1
        if refresh:
            for entry in reversed(waiting[:WAITING_QUEUE_PREFIX_MATCH_MAX]):
                # touch_waiting_prefix (mem_cache/common.py:215-218) -> RadixCache.touch_prefix
                # (radix_cache.py:419-426): the match's access stamps (and splits), no lookup result.
                kv.tree.touch_prefix(entry.fill_ids())


def calc_priority(waiting: list, kv: SglangKV, clock: Callable[[], float],
                  refresh: WaitingPrefixRefresh | None = None) -> None:
    """Order the waiting queue in place: policy "lpm", or given `refresh`, policy "fcfs" with
    --enable-priority-scheduling.

    Mirrors: sglang.srt.managers.schedule_policy:SchedulePolicy.calc_priority (sglang 0.5.23)
    With the tree disabled the policy is FCFS (_validate_and_adjust_policy, :324).
    """
    if refresh is not None:
        # Policy fcfs (schedule_policy.py:231-235): no prefix matching first, since RadixCache has no
        # fast match (BasePrefixCache.supports_fast_match_prefix, mem_cache/base_prefix_cache.py:449).
        sort_by_priority_and_fcfs(waiting)
        refresh(waiting, kv)
        return
    if kv.tree.disable or len(waiting) > WAITING_QUEUE_PREFIX_MATCH_MAX:
        return
    # Mirrors: sglang.srt.managers.schedule_policy:SchedulePolicy._compute_prefix_matches (sglang 0.5.23)
    in_batch = RadixCache(None, page_size=1, clock=clock)  # a fresh waiting_queue_radix_tree (:211, reset :350)
    deprioritized: set[str] = set()
    for entry in waiting:
        prefix_ids = entry.fill_ids()
        kv.match(entry.kv, prefix_ids)
        if entry.kv.prefix_len <= IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD:
            if in_batch.match_prefix(prefix_ids).prefix_len >= IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD:
                deprioritized.add(entry.request.request_id)
            else:
                in_batch.insert(prefix_ids)
    waiting.sort(key=lambda e: float("inf") if e.request.request_id in deprioritized else -e.kv.num_matched_prefix_tokens)


def sort_by_priority_and_fcfs(waiting: list) -> None:
    """Mirrors: sglang.srt.managers.schedule_policy:SchedulePolicy._sort_by_priority_and_fcfs (sglang 0.5.23)
    priority_sign is 1: the replay runs SGLang with --schedule-low-priority-values-first, vLLM's
    order (schedule_policy.py:206), so a smaller value goes first; then the earlier queue entry."""
    waiting.sort(key=lambda e: (e.request.priority, e.wait_queue_entry_time))


@dataclass
class _Admission:
    prefix_len: int
    extend_len: int
    max_new_tokens: int
    is_chunked: bool


class PrefillAdder:
    """One prefill pass's budgets; requests are added in waiting-queue order.

    Mirrors: sglang.srt.managers.schedule_policy:PrefillAdder (sglang 0.5.23), with its PrefillBudget
    (sglang/srt/mem_cache/prefill_budget.py:62-168 PrefillBudget) for one token pool.
    """

    def __init__(self, kv: SglangKV, running: list, new_token_ratio: float, rem_input_tokens: int,
                 rem_chunk_tokens: int | None) -> None:
        self.kv = kv
        self.page_size = kv.page_size
        self.rem_input_tokens = rem_input_tokens
        self.rem_chunk_tokens = rem_chunk_tokens
        self.can_run_list: list = []
        self.new_chunked_req = None
        self.preempt_list: list = []
        self.new_token_ratio = new_token_ratio
        # What running requests may still decode (_get_running_request_total_token_offset, :785).
        self.total_offset: float = sum(self.running_offset(r) for r in running)
        self.current_offset = 0

    def running_offset(self, entry: SglangRequest) -> float:
        # Mirrors: sglang.srt.managers.schedule_policy:PrefillAdder._get_running_request_total_token_offset (sglang 0.5.23)
        return remaining_max_new(entry) * (1.0 if entry.request.sampling_params.ignore_eos else self.new_token_ratio)

    @property
    def rem_total_tokens(self) -> float:
        return self.kv.available_and_evictable() - self.total_offset

    @property
    def cur_rem_tokens(self) -> float:
        return self.kv.available_and_evictable() - self.current_offset

    def ceil_paged_tokens(self, tokens: int) -> int:
        return -(-tokens // self.page_size) * self.page_size

    def budget_state(self) -> AddReqResult:
        # Mirrors: sglang.srt.managers.schedule_policy:PrefillAdder.budget_state (sglang 0.5.23)
        if not (self.rem_total_tokens > 0 and self.cur_rem_tokens > 0):
            return AddReqResult.NO_TOKEN
        if self.rem_input_tokens <= 0:
            return AddReqResult.OTHER
        if self.rem_chunk_tokens is not None and self.rem_chunk_tokens <= 0:
            return AddReqResult.OTHER
        return AddReqResult.CONTINUE

    def _update_prefill_budget(self, extend_input_len: int, max_new_tokens: int) -> None:
        # Mirrors: sglang.srt.managers.schedule_policy:PrefillAdder._update_prefill_budget (sglang 0.5.23)
        # (and PrefillBudget.reserve, prefill_budget.py:156: one page of alignment slack per request)
        extend_input_len = self.ceil_paged_tokens(extend_input_len)
        immediate = extend_input_len + self.page_size
        self.total_offset += immediate + max_new_tokens
        self.current_offset += immediate
        self.rem_input_tokens -= extend_input_len
        if self.rem_chunk_tokens is not None:
            self.rem_chunk_tokens -= extend_input_len

    def add_chunked_req(self, entry: SglangRequest):
        """The next chunk of the request being prefilled in chunks; returns it while unfinished.

        Mirrors: sglang.srt.managers.schedule_policy:PrefillAdder.add_chunked_req (sglang 0.5.23)
        """
        if self.rem_chunk_tokens is None:
            return entry
        available = min(self.rem_chunk_tokens, int(self.rem_total_tokens))
        rem_tokens = available if available > 0 else self.rem_chunk_tokens  # a chunk must progress
        cand = len(entry.fill_ids()) - entry.kv.prefix_len
        truncated = cand > rem_tokens
        new_len = min(cand, rem_tokens)
        entry.kv.extend_end = entry.kv.prefix_len + new_len
        self.can_run_list.append(entry)
        max_new = min(entry.max_new_tokens, CLIP_MAX_NEW_TOKENS) if not truncated else 0
        self._update_prefill_budget(new_len, max_new)
        return entry if truncated else None

    def add_one_req(self, entry: SglangRequest) -> AddReqResult:
        # Mirrors: sglang.srt.managers.schedule_policy:PrefillAdder.add_one_req (sglang 0.5.23)
        cand = len(entry.fill_ids()) - entry.kv.prefix_len
        total_tokens = cand + remaining_max_new(entry) + self.page_size
        # The temporary pin keeps this request's own prefix out of the evictable budget.
        pin = self.kv.lock(entry.kv.last_node)
        try:
            admission = self._select_prefill_admission(entry, total_tokens)
            if isinstance(admission, AddReqResult):
                return admission
            self._commit_prefill_admission(entry, admission)
        finally:
            self.kv.unlock(pin)
        return self.budget_state()

    def _select_prefill_admission(self, entry: SglangRequest, total_tokens: int) -> _Admission | AddReqResult:
        # Mirrors: sglang.srt.managers.schedule_policy:PrefillAdder._select_prefill_admission (sglang 0.5.23)
        prefix_len = entry.kv.prefix_len
        extend_len = len(entry.fill_ids()) - prefix_len
        input_tokens = self.ceil_paged_tokens(extend_len)
        if not total_tokens < self.rem_total_tokens:  # PrefillBudget.check_prefill (prefill_budget.py:114)
            return AddReqResult.NO_TOKEN
        # Without chunking, the first request may exceed the input budget; later ones may not.
        if self.rem_chunk_tokens is None and self.can_run_list and input_tokens >= self.rem_input_tokens:
            return AddReqResult.OTHER
        max_new_tokens = min(entry.max_new_tokens, CLIP_MAX_NEW_TOKENS)
        is_chunked = False
        if self.rem_chunk_tokens is not None and input_tokens > self.rem_chunk_tokens:
            extend_len = self.rem_chunk_tokens // self.page_size * self.page_size
            end = (prefix_len + extend_len) // self.page_size * self.page_size
            extend_len = end - prefix_len
            if extend_len <= 0:
                return AddReqResult.OTHER
            is_chunked, max_new_tokens = True, 0
        return _Admission(prefix_len, extend_len, max_new_tokens, is_chunked)

    def _commit_prefill_admission(self, entry: SglangRequest, admission: _Admission) -> None:
        # Mirrors: sglang.srt.managers.schedule_policy:PrefillAdder._commit_prefill_admission (sglang 0.5.23)
        entry.kv.extend_end = admission.prefix_len + admission.extend_len
        entry.kv.lock = self.kv.lock(entry.kv.last_node)
        self.can_run_list.append(entry)
        if admission.is_chunked:
            self.new_chunked_req = entry
        self._update_prefill_budget(admission.extend_len, admission.max_new_tokens)


    def preempt_to_schedule(self, entry: SglangRequest, running: list, threshold: int,
                            release: Callable[[SglangRequest, int], None]) -> bool:
        """Preempt running requests of a lower priority (by more than threshold) until the new
        request's prompt and output fit; True if that was committed. `running` loses them in place;
        `release(request, remaining)` frees each (ScheduleBatch.release_req).

        Mirrors: sglang.srt.managers.schedule_policy:PrefillAdder.preempt_to_schedule (sglang 0.5.23)
        """
        # Lowest priority first (the largest value: priority_sign 1), then the latest queue entry.
        candidates = sorted((r for r in running if r not in self.preempt_list and not r.request.is_finished),
                            key=lambda r: (-r.request.priority, -r.wait_queue_entry_time))
        # full_untruncated_fill_ids and prefix_len as the request's last init_next_round_input left
        # them (the loop calls it only after this: 0 and 0 for a request never matched), plus its
        # clipped output; no request-slot reserve on this allocator (allocator/base.py:79-86).
        min_tokens_to_remove = (entry.untruncated_fill_len - entry.kv.prefix_len
                                + min(entry.max_new_tokens, CLIP_MAX_NEW_TOKENS) - self.rem_total_tokens)
        preemptible = []
        for running_entry in candidates:
            if running_entry.request.priority - entry.request.priority > threshold:
                preemptible.append(running_entry)
                min_tokens_to_remove -= self.running_offset(running_entry)
                if min_tokens_to_remove <= 0:
                    break
            else:
                break
        if not preemptible or min_tokens_to_remove > 0:
            return False
        # Released in running-batch order, each told how many requests remain (:1763-1775).
        chosen, keep, released = set(preemptible), [], 0
        for running_entry in running:
            if running_entry in chosen:
                self.total_offset -= self.running_offset(running_entry)
                released += 1
                release(running_entry, len(running) - released)
            else:
                keep.append(running_entry)
        running[:] = keep
        # SGLang extends preempt_list with the set itself (:1776-1777), an order by object address;
        # ours keeps the candidates' order. Only two preempted at once of equal priority can tell.
        self.preempt_list.extend(preemptible)
        return True


class NewTokenRatio:
    """Mirrors: sglang.srt.managers.scheduler_components.new_token_ratio_tracker:NewTokenRatioTracker (sglang 0.5.23)"""

    def __init__(self) -> None:
        self.init = min(INIT_NEW_TOKEN_RATIO, 1.0)
        self.min = min(self.init * MIN_NEW_TOKEN_RATIO_FACTOR, 1.0)
        self.decay = (self.init - self.min) / NEW_TOKEN_RATIO_DECAY_STEPS
        self.current = self.init

    def decay_step(self) -> None:
        self.current = max(self.current - self.decay, self.min)

    @staticmethod
    def after_retract(entries: list) -> float:
        decoded = sum(e.request.num_output_tokens for e in entries)
        max_new = sum(e.max_new_tokens for e in entries)
        return min(1.0, (decoded + RETRACT_DECODE_STEPS * len(entries)) / (max_new + 1))
