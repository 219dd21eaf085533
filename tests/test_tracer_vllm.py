"""The real vLLM 0.33 V1 Scheduler + KVCacheManager, traced through vLLM's own plugin loader.

SERVETRACE_TRACE names a trace file; vllm.plugins.load_plugins_by_group (what
load_general_plugins runs in every vLLM process) finds our `vllm.general_plugins` entry point,
which installs the catalog's hooks. The spans read back from the file must describe what the
scheduler actually did, step by step.
"""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tracer.instrument import hooks, otel, spans  # noqa: E402
from tracer.traces.trace_file import read_trace_file  # noqa: E402

BLOCK_SIZE = 16
LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
}


@pytest.fixture
def traced_vllm(tmp_path, monkeypatch):
    """Tracing set up exactly as a vLLM process does it: through the entry point."""
    import vllm.plugins

    trace_path = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("SERVETRACE_TRACE", str(trace_path))
    monkeypatch.delenv("SERVETRACE_OTLP", raising=False)
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    plugins = vllm.plugins.load_plugins_by_group(vllm.plugins.DEFAULT_PLUGINS_GROUP)
    assert "servetrace" in plugins, "the servetrace entry point is not installed (pip install -e .)"
    plugins["servetrace"]()
    try:
        yield trace_path
    finally:
        hooks.uninstall()
        otel.shutdown()
        spans.registry.clear()


def make_scheduler(tmp_path, num_blocks: int):
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    scheduler_config = SchedulerConfig(
        max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512, enable_chunked_prefill=True,
        is_encoder_decoder=False,
    )
    model_config = ModelConfig(model=str(model_dir), skip_tokenizer_init=True, dtype="float32", seed=0)
    cache_config = CacheConfig(block_size=BLOCK_SIZE, enable_prefix_caching=True)
    cache_config.num_gpu_blocks = num_blocks
    vllm_config = VllmConfig(scheduler_config=scheduler_config, model_config=model_config, cache_config=cache_config)
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(BLOCK_SIZE, num_kv_heads=1, head_size=1, dtype=torch.float32))],
    )
    return Scheduler(
        vllm_config=vllm_config, kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config), block_size=BLOCK_SIZE, log_stats=True,
    )


def run_to_completion(scheduler, prompts: dict[str, list[int]], max_tokens: int):
    """Drive schedule / update_from_output like EngineCore.step does; returns each SchedulerOutput."""
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request

    init_none_hash(sha256)
    hasher = get_request_block_hasher(BLOCK_SIZE, sha256)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    for request_id, token_ids in prompts.items():
        scheduler.add_request(Request(request_id=request_id, prompt_token_ids=token_ids, sampling_params=params,
                                      pooling_params=None, block_hasher=hasher))
    outputs = []
    while scheduler.has_unfinished_requests():
        so = scheduler.schedule()
        outputs.append(so)
        req_ids = list(so.num_scheduled_tokens)
        sampled = []
        for rid in req_ids:
            request = scheduler.requests[rid]
            sampled.append([7] if request.num_computed_tokens >= request.num_tokens else [])
        scheduler.update_from_output(so, ModelRunnerOutput(
            req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
            sampled_token_ids=sampled, logprobs=None, prompt_logprobs_dict={}, pooler_output=[],
        ))
        assert len(outputs) < 200, "the scheduler did not finish"
    return outputs


SHARED = list(range(100, 132))  # two full blocks shared by every prompt


def test_scheduler_spans_follow_the_real_scheduler(traced_vllm, tmp_path):
    # 8 blocks (7 usable) cannot hold three 4-block requests: decode must preempt.
    scheduler = make_scheduler(tmp_path, num_blocks=8)
    prompts = {f"r{i}": SHARED + [1000 * (i + 1) + j for j in range(13)] for i in range(3)}
    outputs = run_to_completion(scheduler, prompts, max_tokens=8)
    otel.flush()
    trace = read_trace_file(traced_vllm)
    assert trace.skipped == []

    # One trace per request, rooted at engine.enqueue (Scheduler.add_request).
    enqueues = {s.request_id: s for s in trace.named("engine.enqueue")}
    assert set(enqueues) == set(prompts)
    assert all(s.parent_span_id is None for s in enqueues.values())
    assert len({s.trace_id for s in enqueues.values()}) == 3
    assert all(s.attributes["gen_ai.usage.input_tokens"] == 45 for s in enqueues.values())
    assert all(s.attributes["gen_ai.request.max_tokens"] == 8 for s in enqueues.values())

    # One scheduler.schedule span per schedule() call, with the batch vLLM actually chose,
    # linked to the trace of each request in it.
    schedules = trace.named("scheduler.schedule")
    assert len(schedules) == len(outputs)
    assert any(so.scheduled_cached_reqs.resumed_req_ids for so in outputs), "the small pool must make vLLM resume a request"
    for span, so in zip(schedules, outputs):
        assert span.attributes["servetrace.batch.request_ids"] == list(so.num_scheduled_tokens)
        assert span.attributes["servetrace.batch.num_scheduled_tokens"] == list(so.num_scheduled_tokens.values())
        assert span.attributes["servetrace.batch.total_tokens"] == so.total_num_scheduled_tokens
        assert set(span.attributes["servetrace.batch.preempted_request_ids"]) == set(so.preempted_req_ids)
        assert set(span.attributes["servetrace.batch.resumed_request_ids"]) == set(so.scheduled_cached_reqs.resumed_req_ids)
        def links_of(kind):
            return {(link.trace_id, link.span_id) for link in span.links if link.attributes["servetrace.link"] == kind}

        def roots_of(request_ids):
            return {(enqueues[rid].trace_id, enqueues[rid].span_id) for rid in request_ids}

        assert links_of("request") == roots_of(so.num_scheduled_tokens)
        # A finish or a preemption the step reports links to that request too, as "reported".
        reported = (set(so.preempted_req_ids or ()) | set(so.finished_req_ids or ())) - set(so.num_scheduled_tokens)
        assert links_of("reported") == roots_of(reported)

    # Per-request KV spans live in the request's trace, under its root, linked to the step.
    schedule_ids = {s.span_id for s in schedules}
    for name in ("kv.match_prefix", "kv.allocate", "kv.free", "scheduler.preempt"):
        for span in trace.named(name):
            root = enqueues[span.request_id]
            assert (span.trace_id, span.parent_span_id) == (root.trace_id, root.span_id), name
            if name != "kv.free":
                assert [link.span_id for link in span.links if link.attributes["servetrace.link"] == "step"][0] in schedule_ids

    # The first admission finds nothing cached; the others hit the two shared blocks.
    first_lookups = {}
    for span in trace.named("kv.match_prefix"):
        first_lookups.setdefault(span.request_id, span)
    assert first_lookups["r0"].attributes["servetrace.kv.cached_tokens"] == 0
    assert first_lookups["r1"].attributes["servetrace.kv.cached_tokens"] == 32
    assert first_lookups["r2"].attributes["servetrace.kv.cached_tokens"] == 32

    # Memory pressure: the preemptions vLLM reported are exactly the scheduler.preempt spans.
    preempted = [rid for so in outputs for rid in sorted(so.preempted_req_ids)]
    assert preempted, "the scenario was meant to force a preemption"
    preempt_spans = trace.named("scheduler.preempt")
    assert sorted(s.request_id for s in preempt_spans) == sorted(preempted)
    assert all(s.attributes["servetrace.request.status"] == "PREEMPTED" for s in preempt_spans)

    # Every request finishes by length: its last kv.free says so and reports 8 output tokens.
    last_free = {}
    for span in trace.named("kv.free"):
        last_free[span.request_id] = span
    assert set(last_free) == set(prompts)
    for span in last_free.values():
        assert span.attributes["servetrace.request.status"] == "FINISHED_LENGTH_CAPPED"
        assert span.attributes["gen_ai.usage.output_tokens"] == 8
        assert span.attributes["servetrace.kv.free_blocks"] >= 0

    # A failed allocation (the trigger of a preemption) is visible as allocated=false.
    assert any(s.attributes["servetrace.kv.allocated"] is False for s in trace.named("kv.allocate"))
    assert all(s.resource["servetrace.engine"] == "vllm" for s in trace.spans)


def test_uninstall_restores_the_originals(traced_vllm):
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.sched.scheduler import Scheduler

    assert hasattr(Scheduler.schedule, hooks.MARKER)
    assert hasattr(KVCacheManager.allocate_slots, hooks.MARKER)
    hooks.uninstall("vllm")
    assert not hasattr(Scheduler.schedule, hooks.MARKER)
    assert not hasattr(KVCacheManager.allocate_slots, hooks.MARKER)
    assert hooks.installed("vllm") == []
