"""`servetrace replay WORKLOAD`: the same workload through our scheduler, vLLM's and SGLang's prefix cache."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# Flags that override the config file; None means "not given".
CONFIG_FLAGS = {
    "block_size": int,
    "num_blocks": int,
    "max_num_seqs": int,
    "max_num_batched_tokens": int,
    "max_model_len": int,
    "long_prefill_token_threshold": int,
    "radix_pool_tokens": int,
    "radix_concurrency": int,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a workload through mini / vLLM / SGLang and compare step by step",
        description=(
            "Drive a JSONL workload through our scheduler (mini), vLLM 0.33's real V1 Scheduler + "
            "KVCacheManager (vllm) and SGLang 0.5.23's RadixCache (sglang: prefix-cache replay), "
            "with forced outputs standing in for the model. mini-sglang is our engine's SGLang mode "
            "(cache_mode sglang); listed with sglang, it is compared step by step with SGLang 0.5.23's real "
            "Scheduler, run in .venv-sglang (`--engines mini-sglang,sglang`). Exit status 1 if the engines diverge."
        ),
    )
    parser.add_argument("workload", nargs="?", help="workload JSONL (see `servetrace workload gen`)")
    parser.add_argument("--from-trace", metavar="TRACE", default=None,
                        help="replay the workload a trace recorded (arrivals on the step each request entered, prompt "
                             "token ids or block hashes, output lengths, the server's config) through mini and vLLM (the "
                             "version the trace names), each compared with the traced server's own steps")
    parser.add_argument("--engines", default=None, help="comma-separated: mini, vllm, sglang, mini-sglang "
                        "(default mini,vllm,sglang; with --from-trace mini,vllm)")
    parser.add_argument("--config", default=None, help="JSON file of replay config keys (flags override it; default: "
                        "the workload's sidecar W.config.json when `workload gen` wrote one)")
    parser.add_argument("--out", default="replay-out", help="directory for step logs, traces and compare.json "
                        "(a run replaces what the previous replay wrote there and deletes nothing else)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out that replay did not write")
    for name, kind in CONFIG_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    parser.add_argument("--policy", choices=["fcfs", "priority"], default=None)
    parser.add_argument("--chunked-prefill", dest="enable_chunked_prefill", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--prefix-caching", dest="enable_prefix_caching", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--async-scheduling", dest="async_scheduling", action=argparse.BooleanOptionalAction, default=None,
                        help="drive vLLM 0.33's AsyncScheduler and ours in EngineCore.step_with_batch_queue's order "
                        "(vLLM's serving default); mini and vllm only")
    parser.add_argument("--radix-page-size", type=int, default=1, help="page size of the radix-cache replay (SGLang default 1)")
    parser.add_argument("--step-ms", type=float, default=20.0, help="nominal step duration that maps arrival_time to a step")
    parser.add_argument("--no-trace", action="store_true", help="do not write trace files")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, config_file: str | None = None):
    from tracer.replay.config import ReplayConfig

    config_file = config_file or args.config
    base = ReplayConfig.from_file(config_file).to_json() if config_file else {}
    names = list(CONFIG_FLAGS) + ["policy", "enable_chunked_prefill", "enable_prefix_caching", "async_scheduling"]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return ReplayConfig.from_dict({**base, **overrides})


def run(args: argparse.Namespace) -> int:
    from tracer.replay.report import print_report
    from tracer.commands._console import stdout_console
    from tracer.replay.session import parse_engines, run_replay
    from tracer.replay.workload import load_workload, sidecar_config_path

    if args.from_trace is not None:
        return run_from_trace(args)
    if args.workload is None:
        raise ValueError("give a workload JSONL, or --from-trace TRACE")
    if args.step_ms <= 0:
        raise ValueError("--step-ms must be > 0")
    if args.radix_page_size < 1:
        raise ValueError("--radix-page-size must be >= 1")
    engines = parse_engines(args.engines or "mini,vllm,sglang")
    # The config a generated workload's shape needs (memory-pressure: a pool it outgrows) rides
    # beside it; an explicit --config wins, and flags override either.
    sidecar = sidecar_config_path(args.workload)
    config_file = args.config or (str(sidecar) if sidecar.is_file() else None)
    config = config_from_args(args, config_file)
    if config.async_scheduling and set(engines) - {"mini", "vllm"}:
        raise ValueError("--async-scheduling replays vLLM's AsyncScheduler: use --engines mini,vllm "
                         "(SGLang's overlap loop is not replayed)")
    workload = load_workload(args.workload, step_seconds=args.step_ms / 1000, tokenize=_lazy_tokenizer())
    console = stdout_console()
    if config_file and not args.config:
        keys = json.loads(Path(config_file).read_text())
        console.print(f"config from {config_file}: " + ", ".join(f"{k}={v}" for k, v in keys.items()))
    console.print(f"replaying {len(workload)} requests through {', '.join(engines)} ...")
    result = run_replay(workload, config, engines, args.out, radix_page_size=args.radix_page_size,
                        trace=not args.no_trace, force=args.force)
    print_report(result.comparisons, result.radix, console)
    for note in result.notes:
        console.print(f"[dim]{note}[/dim]")
    console.print(f"wrote {', '.join(str(p) for p in result.files)}")
    if len([e for e in engines if e in ("mini", "vllm")]) < 2 and "sglang" not in engines:
        console.print("[dim]one scheduler engine only: nothing to compare[/dim]")
    if result.compared_nothing:
        console.print("[bold red]nothing was compared (no step or record on either side): "
                      "that is not agreement[/bold red]")
    return 0 if result.agree else 1


def run_from_trace(args: argparse.Namespace) -> int:
    from tracer.commands._console import stdout_console
    from tracer.replay.from_trace import load_replayable, parse_from_trace_engines, replay_config, replay_from_trace

    if args.workload is not None:
        raise ValueError("give a workload or --from-trace, not both")
    given = [name for name in list(CONFIG_FLAGS) + ["policy", "enable_chunked_prefill", "enable_prefix_caching", "async_scheduling", "config"]
             if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--from-trace replays the config the trace recorded; drop {', '.join(given)} "
                         "(`servetrace whatif TRACE --set KEY=VALUE` replays it under another)")
    engines = parse_from_trace_engines(args.engines or "mini,vllm")
    console = stdout_console()
    run = load_replayable(args.from_trace)
    console.print(f"{args.from_trace}: {run.engine} {run.engine_version or ''}, {len(run.workload)} requests, "
                  f"{len(run.steps)} steps; config " + ", ".join(f"{k}={v}" for k, v in replay_config(run).to_json().items()
                                                               if not k.startswith("radix_")))
    result = replay_from_trace(args.from_trace, engines, args.out, force=args.force, run=run)
    for c in result.comparisons:
        if c.agree:
            console.print(f"[green]{c.engine}: agrees with the trace on all {c.traced_steps} steps[/green]")
        else:
            d = c.divergence
            where = f"step {d.step}: {', '.join(d.fields)} traced {d.traced} replayed {d.replayed}" if d else ""
            console.print(f"[bold red]{c.engine}: {c.agreeing_steps} of {c.traced_steps} steps agree; {where}[/bold red]")
        if c.stalled:
            console.print(f"[dim]{c.engine}: replay stopped early: {c.stalled}[/dim]")
    for note in run.notes:
        console.print(f"[dim]{note}[/dim]")
    if result.files:
        console.print(f"wrote {', '.join(str(p) for p in result.files)}")
    return 0 if result.agree else 1


def _lazy_tokenizer():
    tokenizer = None

    def tokenize(text: str) -> list[int]:
        nonlocal tokenizer
        if tokenizer is None:
            from engine.tokenizer import Tokenizer, default_model_path

            tokenizer = Tokenizer(default_model_path())
        return tokenizer.encode(text)

    return tokenize
