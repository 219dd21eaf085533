"""Engine options shared by the commands that start our engine (generate, serve, demo)."""
from __future__ import annotations

import argparse

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig, StructuredOutputsConfig


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--model", default=None, help="GGUF file or HF directory (default: the bundled SmolLM2-135M-Instruct)")
    group.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    group.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bfloat16 on CUDA and on CPUs with AVX-512 BF16 or AMX, else float32)")
    group.add_argument("--block-size", type=int, default=16)
    group.add_argument("--num-blocks", type=int, default=None, help="KV pool size in blocks (default: from --kv-cache-mb)")
    group.add_argument("--kv-cache-mb", type=int, default=256)
    group.add_argument("--no-prefix-caching", action="store_true")
    group.add_argument("--max-num-seqs", type=int, default=64)
    group.add_argument("--max-num-batched-tokens", type=int, default=2048)
    group.add_argument("--max-model-len", type=int, default=2048)
    group.add_argument("--no-chunked-prefill", action="store_true")
    group.add_argument("--long-prefill-token-threshold", type=int, default=0)
    group.add_argument("--policy", choices=["fcfs", "priority"], default="fcfs")
    group.add_argument(
        "--cache-mode", choices=["vllm", "sglang"], default="vllm",
        help="prefix sharing: vLLM's hashed blocks, or SGLang's radix tree with longest-prefix-first admission",
    )
    group.add_argument(
        "--jump-forward", action="store_true",
        help="structured output: append the tokens a grammar forces without a forward pass each (SGLang's earlier jump-forward; off by default)",
    )
    group.add_argument(
        "--async-scheduling", action=argparse.BooleanOptionalAction, default=SchedulerConfig.async_scheduling,
        help="schedule step N+1 while step N runs, as vLLM 0.33 does by default (AsyncScheduler and a batch "
        "queue of 2, the model on a worker thread; --cache-mode vllm only). Default: off: on a CPU the host "
        "work it can hide is under 1%% of a step, and on vs off measured within noise "
        "(bench/results/async_scheduling.md)",
    )
    spec = parser.add_argument_group("speculative decoding (vLLM's speculative_config names)")
    spec.add_argument("--speculative-method", choices=["ngram", "ngram_gpu"], default=None,
                      help="draft tokens by prompt lookup (n-gram), verified in one forward pass; ngram_gpu "
                           "proposes on the model runner's side and runs with --async-scheduling (default: off)")
    spec.add_argument("--num-speculative-tokens", type=int, default=None, help="drafts per request per step (default: 3)")
    spec.add_argument("--prompt-lookup-min", type=int, default=None, help="shortest n-gram to match (default: as vLLM, 5)")
    spec.add_argument("--prompt-lookup-max", type=int, default=None, help="longest n-gram to match (default: as vLLM, 5)")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "kv_cache_mb"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.async_scheduling and args.cache_mode == "sglang":
        raise ValueError("--async-scheduling is vLLM's AsyncScheduler; --cache-mode sglang runs synchronously")
    if getattr(args, "jump_forward", False) and args.cache_mode == "sglang":
        raise ValueError("--jump-forward runs with vLLM's scheduler only here; --cache-mode sglang does not jump")
    return EngineConfig(
        model=ModelConfig(model=args.model, device=args.device, dtype=args.dtype),
        cache=CacheConfig(
            block_size=args.block_size,
            num_blocks=args.num_blocks,
            kv_cache_memory_bytes=args.kv_cache_mb * 1024 * 1024,
            enable_prefix_caching=not args.no_prefix_caching,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            enable_chunked_prefill=not args.no_chunked_prefill,
            long_prefill_token_threshold=args.long_prefill_token_threshold,
            policy=args.policy,
            cache_mode=args.cache_mode,
            async_scheduling=args.async_scheduling,
        ),
        structured_outputs=StructuredOutputsConfig(jump_forward=getattr(args, "jump_forward", False)),
        speculative=_speculative_config(args),
    )


def _speculative_config(args: argparse.Namespace) -> SpeculativeConfig | None:
    named = [flag for flag in ("num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max")
             if getattr(args, flag, None) is not None]
    if getattr(args, "speculative_method", None) is None:
        if named:
            raise ValueError(f"--{named[0].replace('_', '-')} needs --speculative-method ngram")
        return None
    return SpeculativeConfig(
        method=args.speculative_method,
        num_speculative_tokens=3 if args.num_speculative_tokens is None else args.num_speculative_tokens,
        prompt_lookup_min=args.prompt_lookup_min,
        prompt_lookup_max=args.prompt_lookup_max,
    )


def add_trace_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracing")
    group.add_argument("--trace", metavar="FILE", default=None, help="write OpenTelemetry spans to FILE (OTLP/JSON lines)")
    group.add_argument("--otlp", metavar="URL", default=None, help="export spans over OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces")
    group.add_argument("--console-trace", action="store_true", help="print spans to stderr")


def start_tracing(args: argparse.Namespace) -> bool:
    """Install the catalog's hooks on our engine when a trace destination was given."""
    if not (args.trace or args.otlp or args.console_trace):
        return False
    from tracer.instrument import otel, tracing

    if args.trace:
        otel.claim_trace_file(args.trace)  # the command owns --trace FILE: a rerun replaces it (the exporter appends)
    tracing.enable("mini", trace_file=args.trace, otlp_endpoint=args.otlp, console=args.console_trace)
    return True


def stop_tracing() -> None:
    from tracer.instrument import tracing

    tracing.disable()
