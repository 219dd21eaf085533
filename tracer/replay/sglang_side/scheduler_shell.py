"""SGLang 0.5.23's Scheduler made with __new__: what Scheduler.__init__ (sglang/srt/managers/scheduler.py:465)
would set, minus the model, torch.distributed and the ZMQ sockets. Real init_* methods are called
where they need none of those; the rest are set here, each as the value __init__ would give it
on a single CPU rank with overlap, speculative decoding, LoRA, disaggregation, HiCache and
metrics off (the live CPU server's flags)."""
from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import torch
from typing import Any

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.environ import envs
from sglang.srt.disaggregation.utils import DisaggregationMode
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.mem_cache.allocator.page_interleave import page_interleave_shard_size
from sglang.srt.model_executor.model_runner_components.ngram_embedding_manager import NgramEmbeddingManager
from sglang.srt.runtime_context import get_context, get_memory, get_parallel, get_schedule
from sglang.srt.server_args import ServerArgs
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm


class ReplayScheduler(Scheduler):
    """SGLang's Scheduler, unchanged: a subclass only so that the replay's instances are named as such.
    Every method the replay calls is the inherited one; what talks to other processes is given
    no-op endpoints below (ipc_channels, load publishing), never a replaced method."""


class _NoOp:
    """Absorbs calls on a component whose every effect is outside scheduling (metrics, load
    publishing, health checks): named in the attribute list below, never used for a decision."""

    def __getattr__(self, name: str) -> Any:
        return _NoOp()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def __bool__(self) -> bool:
        return False

    def _absorb(self, *args: Any) -> "_NoOp":
        return self  # counters added to (metrics_reporter.num_generated_tokens += n) stay absorbed

    __add__ = __radd__ = __iadd__ = __sub__ = __rsub__ = __isub__ = __mod__ = _absorb


def make_scheduler(server_args: ServerArgs, config: dict, req_to_token_pool: Any, allocator: Any, tree_cache: Any) -> Scheduler:
    s = ReplayScheduler.__new__(ReplayScheduler)
    # __init__ :474-520, the flags read from the published server args.
    s.is_initializing = True
    s.forward_ct = 0
    s.processed_tokens_counter = 0
    s.cur_batch_for_debug = None
    s.server_args = server_args
    s.schedule_policy = get_schedule().schedule_policy
    s.enable_priority_scheduling = get_schedule().enable_priority_scheduling
    s.abort_on_priority_when_disabled = get_schedule().abort_on_priority_when_disabled
    s.schedule_low_priority_values_first = get_schedule().schedule_low_priority_values_first
    s.priority_scheduling_preemption_threshold = get_schedule().priority_scheduling_preemption_threshold
    s.enable_lora = False
    s.enable_overlap = False
    s.enable_overlap_mlx = False
    s.enable_pdmux = False
    s.skip_tokenizer_init = True
    s.stream_interval = 1
    s.spec_algorithm = SpeculativeAlgorithm.from_string(None)
    s.page_size = get_schedule().page_size
    s.enable_hierarchical_cache = False
    s.enable_lmcache = False
    s.enable_session_radix_cache = False
    s.enable_hicache_storage = False
    s.enable_unified_cache_external_linker = False
    s.enable_decode_hicache = False
    s.enable_hisparse = False
    s.attn_dp_enabled = False
    s.enable_unified_memory = False
    s.model_config = ModelConfig.from_server_args(server_args)  # init_model_config :793 (reads config.json only)
    s.init_diffusion_llm()  # :660 (dllm off: dllm_config None, an empty DllmManager)
    s.is_generation = True
    # What init_model_worker (:1128) reads off the model worker (get_worker_info) and build_kv_cache returns.
    s.max_total_num_tokens = server_args.max_total_tokens
    s.max_prefill_tokens = server_args.max_prefill_tokens
    s.max_running_requests = req_to_token_pool.size  # resolve_max_num_reqs sized the rows (harness.build_pools)
    s.max_queued_requests = None
    # TpModelWorker.get_worker_info (sglang/srt/managers/tp_worker.py:568-572).
    s.max_req_len = min(server_args.context_length - 1, server_args.max_total_tokens - 1)
    s.max_req_input_len = s.max_req_len - 5
    s.device = "cpu"
    s.forward_stream = torch.get_device_module("cpu").Stream()
    s.min_free_slots_delayer = None
    s.max_new_tokens_limit = envs.SGLANG_MAX_NEW_TOKENS_LIMIT.get()  # __init__ :525
    s.kv_shard_widening = page_interleave_shard_size(allocator)  # __init__ :611 (1: no sharded pages)
    if not get_parallel().pp_max_micro_batch_size:  # as init_model_worker (:1240) sets it
        get_context().override("scheduler.pp_max_micro_batch_size_default",
                               pp_max_micro_batch_size=max(s.max_running_requests // get_parallel().pp_size, 1))
    s.req_to_token_pool = req_to_token_pool
    s.token_to_kv_pool_allocator = allocator
    s.tree_cache = tree_cache
    s.disable_radix_cache = get_memory().disable_radix_cache
    s.is_hybrid_swa = False
    s.is_hybrid_ssm = False
    s.sliding_window_size = None
    s.hisparse_coordinator = None
    s.decode_offload_manager = None
    s.draft_worker = None
    s.disaggregation_mode = DisaggregationMode.NULL
    s.truncation_align_size = None
    s.dynamic_chunk_sizer = None
    # The model runner's attributes the scheduling path reads; none of them is the model.
    ngram = NgramEmbeddingManager.from_model(model=torch.nn.Module(), model_config=s.model_config,
                                             req_to_token_pool=req_to_token_pool,
                                             max_running_requests=s.max_running_requests, device="cpu")
    runner = SimpleNamespace(attn_backend=None, prefill_aware_swa=False, ngram_embedding_manager=ngram)
    s.tp_worker = SimpleNamespace(model_runner=runner, model_config=s.model_config)
    # One rank: no process groups (init_model_worker :1250 takes them from torch.distributed).
    for group in ("tp", "attn_tp", "attn_cp", "pp", "world", "dp_tp"):
        setattr(s, f"{group}_group", SimpleNamespace(world_size=1, rank=0, rank_in_group=0, first_rank=0, last_rank=0, cpu_group=None,
                                                     is_first_rank=True, is_last_rank=True))
        setattr(s, f"{group}_cpu_group", None)
    s.model_worker = None  # the forward pass is harness.FORWARD_STAND_IN
    s.init_running_status()  # :1315
    s.init_chunked_prefill()  # :1351
    s.metrics_reporter = _NoOp()
    s.metrics_collector = None
    s.scheduler_stage_metrics = None  # the stage timers (sglang/srt/observability/scheduler_stage_metrics.py:176 skips None)
    s.init_schedule_policy()  # :1436 (SchedulePolicy, NewTokenRatioTracker.from_config)
    s.init_overlap()  # :1664
    s.maybe_init_ngram_embedding()  # :1739
    s.init_grammar_manager()  # :2415 (grammar_backend none)
    s.maybe_init_scripted_scheduler_hook()  # :2418 (off)
    s.weight_updater = SimpleNamespace(offload_tags=set())  # no weights to update or offload
    s.require_mlp_sync = False  # one rank, no DP attention
    s.init_dp_attn_adapter()  # :2487 (with no DP its maybe_prepare_mlp_sync_batch passes the batch through)
    # :2579 init_load_inquirer: its step counters (read by _record_step_counters :5120, metrics only);
    # the inquirer itself answers /get_loads, and PrefillStats reads a pending-token count from it.
    s.total_prefill_uncached_tokens = 0
    s.total_prefill_busy_us = 0
    s.decode_moment_totals = [0.0] * 6
    s._prev_step = None
    s._prev_prefill_end_ts = None
    s._sched_idled = False
    s._pause_intervals = deque(maxlen=64)
    s._pause_started_at = None
    s.load_inquirer = _NoOp()
    s.load_snapshot_writer = None  # :815 set by init_ipc_channels; None publishes nothing (:875)
    s.enable_fpm = False  # forward-pass metrics off
    s.rust_server = None  # :2441 the Rust frontend is off
    s.ipc_channels = SimpleNamespace(send_to_detokenizer=_NoOp())  # :815 the ZMQ socket to the DetokenizerManager
    s.load_publisher = _NoOp()  # :2568 publishes load over ZMQ
    s.init_output_streamer()  # :2633
    s.init_batch_result_processor()  # :2662
    s.is_initializing = False
    return s
