"""Build SGLang 0.5.23's Scheduler without a model and run one replay job through it (see driver.py
for what runs and what does not). Line numbers cite the installed sglang/srt/managers/scheduler.py
unless another file is named."""
from __future__ import annotations

import itertools
import time
from array import array
from typing import Any

import torch

from sglang.srt.managers.schedule_batch import Req
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache import radix_cache as radix_module
from sglang.srt.runtime_context import SpawnRanks, publish, reset_context
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

from scheduler_shell import make_scheduler  # the attributes Scheduler.__init__ would set

VOCAB = 49152  # the bundled SmolLM2's vocab_size; forced ids must lie inside it (Req's vocab-boundary finish)


def server_args_for(config: dict, model_path: str) -> ServerArgs:
    """The ServerArgs an SGLang server with the replay's pool and budgets would run with."""
    chunked = config["max_num_batched_tokens"] if config["enable_chunked_prefill"] else -1
    return ServerArgs(
        model_path=model_path,
        device="cpu",
        attention_backend="torch_native",
        page_size=config["block_size"],
        # Our pool counts a reserved page 0; SGLang's allocators reserve slot / page 0 on top of size.
        max_total_tokens=(config["num_blocks"] - 1) * config["block_size"],
        max_running_requests=config["max_num_seqs"],
        max_prefill_tokens=config["max_num_batched_tokens"],
        chunked_prefill_size=chunked,
        context_length=config["max_model_len"],
        schedule_policy=config.get("schedule_policy", "lpm"),
        enable_priority_scheduling=config["policy"] == "priority",
        # SGLang's priority default: larger value first; ours (vLLM's) is smaller value first.
        schedule_low_priority_values_first=True,
        # disable_priority_preemption keeps its default (False: sglang/srt/arg_groups/fields/schedule.py:107-110):
        # priority preemption is on, as engine/sglang_scheduler.py runs it; its threshold is the config's
        # (SGLang's default 10, schedule.py:122-125, where the job does not say).
        priority_scheduling_preemption_threshold=config.get("priority_scheduling_preemption_threshold", 10),
        disable_radix_cache=not config["enable_prefix_caching"],
        disable_overlap_schedule=True,
        grammar_backend="none",
        skip_tokenizer_init=True,
        random_seed=0,
    )


def max_running_requests(server_args: ServerArgs) -> int:
    # Mirrors kv_cache_configurator.py:3126-3129 (one attention-DP worker).
    return min(max(1, server_args.max_running_requests), server_args.max_total_tokens // 2)


def build_pools(server_args: ServerArgs, config: dict) -> tuple[Any, Any, Any]:
    """The real token pools and RadixCache, sized from the config (kv_cache_builder.build_kv_cache,
    sglang/srt/mem_cache/kv_cache_builder.py:308, gets the same three objects from the model runner)."""
    size = server_args.max_total_tokens
    page_size = server_args.page_size
    # One row per running request, as KVCacheConfigurator.resolve_max_num_reqs sizes it
    # (sglang/srt/mem_cache/kv_cache_configurator.py:3119): max_running_requests, at most half the pool.
    rows = max_running_requests(server_args)
    req_to_token_pool = ReqToTokenPool(size=rows, max_context_len=config["max_model_len"] + 4,
                                       device="cpu", enable_memory_saver=False)
    if page_size == 1:
        allocator = TokenToKVPoolAllocator(size, dtype=torch.float32, device="cpu", kvcache=None, need_sort=False)
    else:
        allocator = PagedTokenToKVPoolAllocator(size, page_size, dtype=torch.float32, device="cpu", kvcache=None,
                                                need_sort=False)
    params = CacheInitParams(disable=server_args.disable_radix_cache, req_to_token_pool=req_to_token_pool,
                             token_to_kv_pool_allocator=allocator, page_size=page_size)
    tree_cache = radix_module.RadixCache(params)
    return req_to_token_pool, allocator, tree_cache


def FORWARD_STAND_IN(batch: Any, forced: dict[str, list[int]]) -> GenerationBatchResult:
    """Stand-in for the forward pass (Scheduler.run_batch -> TpModelWorker.forward_batch_generation):
    no model runs; each request "samples" its next forced token id."""
    ids = []
    for req in batch.reqs:
        outputs = forced[req.rid]
        ids.append(outputs[len(req.output_ids)] if len(req.output_ids) < len(outputs) else 0)
    return GenerationBatchResult(next_token_ids=torch.tensor(ids, dtype=torch.int64))


class _Clock:
    """RadixCache stamps LRU times with time.monotonic(); a counter keeps eviction order deterministic."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1)
        self.monotonic = lambda: float(next(self._ticks))
        self.perf_counter = time.perf_counter
        self.time = time.time


def make_req(request: dict, config: dict, arrival_index: int) -> Req:
    params = SamplingParams(max_new_tokens=request["max_tokens"], temperature=0.0,
                            ignore_eos=config.get("ignore_eos", False))
    params.normalize(None)
    # A request's cache_salt / extra_key, where the job gives one, go where handle_generate_request puts
    # a client's (sglang/srt/managers/scheduler.py:3025-3026; a LoRA id is appended to extra_key,
    # schedule_batch.py:1165-1168): the radix tree keeps their prefixes apart.
    req = Req(request["id"], "", array("q", request["prompt_token_ids"]), params, vocab_size=VOCAB,
              priority=request.get("priority", 0) if config["policy"] == "priority" else None,
              eos_token_ids=set(), extra_key=request.get("extra_key"), cache_salt=request.get("cache_salt"))
    return req


def run_job(job: dict, on_arrival: Any = None) -> dict:
    """`on_arrival(req)`, where given, runs as each request enters the queue (a traced job opens the
    request's trace there, as the live server's handle_generate_request would)."""
    config, requests, model_path = job["config"], job["requests"], job["model_path"]
    server_args = server_args_for(config, model_path)
    reset_context()
    publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=0, dp_rank=None))
    clock = _Clock()
    saved_time = radix_module.time
    radix_module.time = clock
    try:
        pools = build_pools(server_args, config)
        scheduler = make_scheduler(server_args, config, *pools)
        return drive(scheduler, requests, config, pools, on_arrival, timed_clock(job))
    finally:
        radix_module.time = saved_time


def timed_clock(job: dict) -> Any:
    """A whatif job ("timed": the step-time model, arrival seconds, closed-loop links) runs on the
    predicted clock servetrace's own replays use (tracer/replay/whatif/timeline.py, importable here
    from the editable install); any other job on its requests' arrival steps."""
    timed = job.get("timed")
    if not timed:
        return None
    from tracer.replay.whatif.step_time import StepTimeModel
    from tracer.replay.whatif.timeline import Arrival, PredictedClock

    arrivals = [Arrival(r["id"], timed["arrivals_s"][r["id"]], r["arrival_step"]) for r in job["requests"]]
    after = {rid: (str(p), float(lag)) for rid, (p, lag) in (timed.get("after") or {}).items()}
    return PredictedClock("sglang", arrivals, StepTimeModel.from_json(timed["model"]), after)


def _step_rows(batch: Any, is_extend: bool) -> list[list[int]]:
    """What the step-time model's features are made of (tracer.replay.whatif.step_time.step_features):
    (tokens, tokens computed before the step, prompt length) per request."""
    if is_extend:
        return [[int(n), int(p), len(r.origin_input_ids)] for r, n, p in zip(batch.reqs, batch.extend_lens, batch.prefix_lens)]
    # one token each, after the context it already holds
    return [[1, len(r.origin_input_ids) + len(r.output_ids) - 1, len(r.origin_input_ids)] for r in batch.reqs]


def _step_features(rows: list[list[int]], serial_step_max_tokens: int) -> list[float]:
    from tracer.replay.whatif.step_time import step_features

    return step_features(rows, serial_step_max_tokens)


def _finish_reason(req: Req) -> str | None:
    if not req.finished():
        return None
    kind = type(req.finished_reason).__name__
    return {"FINISH_LENGTH": "length", "FINISH_MATCHED_TOKEN": "stop", "FINISH_MATCHED_STR": "stop"}.get(kind, "abort")


def drive(scheduler: Scheduler, requests: list[dict], config: dict, pools: tuple, on_arrival: Any = None,
          clock: Any = None) -> dict:
    """Scheduler.event_loop_normal (:2026), one iteration per replay step. With a clock
    (timed_clock), requests are added when it says they are due and each batch's time goes on it:
    the result's "log" is its TimedLog."""
    _, allocator, tree_cache = pools
    page_size = config["block_size"]
    forced = {r["id"]: r["output_token_ids"] for r in requests}
    pending = sorted(enumerate(requests), key=lambda item: (item[1]["arrival_step"], item[0]))
    by_id: dict[str, Req] = {}
    ever_retracted: set[str] = set()
    steps: list[dict] = []
    step, idle = 0, 0
    max_steps = job_limit = config.get("max_steps", 100_000)
    index_of = {r["id"]: i for i, r in enumerate(requests)}
    while (clock.waiting() if clock is not None else pending) or any(not r.finished() for r in by_id.values()):
        unfinished = [r for r in by_id.values() if not r.finished()]
        if clock is not None:
            if not clock.pending and not unfinished:
                return _result(steps, "requests wait on a predecessor that never finished", clock)
            due = [(index_of[rid], requests[index_of[rid]]) for rid in clock.admit(engine_busy=bool(unfinished))]
        else:
            if not unfinished and pending[0][1]["arrival_step"] > step:
                step = pending[0][1]["arrival_step"]
            due = []
            while pending and pending[0][1]["arrival_step"] <= step:
                due.append(pending.pop(0))
        arrivals = []
        for index, request in due:
            req = make_req(request, config, index)
            by_id[req.rid] = req
            scheduler.init_req_max_new_tokens(req)  # as _handle_generate_request (:2959) does: clip to fit
            if on_arrival is not None:
                on_arrival(req)
            scheduler._add_request_to_queue(req)  # the real queue entry (:3480)
            arrivals.append(req.rid)
        waiting_before = {r.rid for r in scheduler.waiting_queue}
        running_before = {r.rid for r in scheduler.running_batch.reqs}
        if scheduler.chunked_req is not None:
            running_before.add(scheduler.chunked_req.rid)
        # The last prefill batch, merged into the running batch inside get_next_batch_to_run: a
        # request it admitted can be preempted by priority before it ever decodes.
        if scheduler.last_batch is not None and scheduler.last_batch.forward_mode.is_extend():
            running_before.update(r.rid for r in scheduler.last_batch.reqs if not r.finished())

        started = time.perf_counter()
        plan = scheduler.get_next_batch_to_run(running_batch=scheduler.running_batch, last_batch=scheduler.last_batch)
        schedule_seconds = time.perf_counter() - started
        scheduler.running_batch = plan.running_batch
        batch = plan.batch_to_run

        scheduled, admitted = [], []
        retracted = [r.rid for r in scheduler.waiting_queue if r.rid in running_before]
        ever_retracted.update(retracted)
        update_seconds = 0.0
        finished: list[list[str]] = []
        if batch is not None:
            is_extend = batch.forward_mode.is_extend()
            for req, extend_len, prefix_len in zip(batch.reqs, batch.extend_lens if is_extend else [1] * len(batch.reqs),
                                                   batch.prefix_lens if is_extend else [0] * len(batch.reqs)):
                scheduled.append([req.rid, int(extend_len)])
                if is_extend and req.rid in waiting_before:
                    admitted.append({"request_id": req.rid, "cached_tokens": int(prefix_len),
                                     "resumed": req.rid in ever_retracted})
            rows = _step_rows(batch, is_extend) if clock is not None else []
            features = _step_features(rows, clock.model.serial_step_max_tokens) if clock is not None else []
            outputs_before = {r.rid: len(r.output_ids) for r in batch.reqs}
            result = FORWARD_STAND_IN(batch, forced)
            # The bookkeeping run_batch does before its forward (:4620-4632).
            scheduler.forward_ct += 1
            batch.forward_iter = scheduler.forward_ct
            batch.launch_ts = time.monotonic()
            batch.after_idle_gap = scheduler._sched_idled
            scheduler._sched_idled = False
            if batch.extend_num_tokens:
                scheduler.processed_tokens_counter += batch.extend_num_tokens
            started = time.perf_counter()
            scheduler.process_batch_result(batch, result)
            update_seconds = time.perf_counter() - started
            finished = [[r.rid, _finish_reason(r)] for r in batch.reqs if r.finished()]
        elif scheduler.is_fully_idle():
            scheduler.new_token_ratio_tracker.reset()  # the slice of on_idle (:5241) that decides anything
        scheduler.last_batch = batch

        # Every request holding KV: the running batch, the prefill batch that joins it at the next
        # get_next_batch_to_run (:3935), then the request being prefilled in chunks (kept out of that merge).
        running = [r.rid for r in scheduler.running_batch.reqs if not r.finished()]
        if batch is not None and batch.forward_mode.is_extend():
            running += [r.rid for r in batch.reqs if not r.finished() and r is not scheduler.chunked_req
                        and r.rid not in running]
        if scheduler.chunked_req is not None and not scheduler.chunked_req.finished():
            running.append(scheduler.chunked_req.rid)
        unfinished = [r for r in by_id.values() if not r.finished()]
        steps.append({
            "step": step,
            "arrivals": arrivals,
            "scheduled": scheduled,
            "admitted": admitted,
            "preempted": retracted,
            "finished": finished,
            "running": running,
            "waiting": [r.rid for r in scheduler.waiting_queue],
            "num_computed_tokens": {r.rid: int(r.kv.kv_committed_len) for r in unfinished},
            "num_free_blocks": (allocator.available_size() + tree_cache.evictable_size()) // page_size,
            "schedule_seconds": schedule_seconds,
            "update_seconds": update_seconds,
            "new_token_ratio": scheduler.new_token_ratio_tracker.current,
        })
        if clock is not None:
            done = [rid for rid, _ in finished]
            if scheduled or retracted:
                sampled = [r.rid for r in batch.reqs if len(r.output_ids) > outputs_before[r.rid]] if batch is not None else []
                clock.ran(dict((rid, n) for rid, n in scheduled), retracted, done, features, sampled,
                          rows if batch is not None else [])
            else:
                clock.empty_step(done, anything_running=bool(running))
        idle = 0 if (scheduled or arrivals) else idle + 1
        # Requests still to come keep an idle loop going: on their step, or (timed) their time.
        later = (bool(clock.pending) and idle < 1000) if clock is not None else bool(pending and pending[0][1]["arrival_step"] > step)
        if idle >= 8 and not later:
            return _result(steps, f"no batch for {idle} steps (waiting: {steps[-1]['waiting'][:5]})", clock)
        step += 1
        if len(steps) >= max_steps:
            return _result(steps, f"stopped after max_steps={job_limit}", clock)
    return _result(steps, None, clock)


def _result(steps: list[dict], stalled: str | None, clock: Any) -> dict:
    return {"steps": steps, "stalled": stalled, **({} if clock is None else {"log": clock.log.to_json()})}
