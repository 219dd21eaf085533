"""`servetrace generate "prompt"`: offline generation on our engine, streaming text to stdout."""
from __future__ import annotations

import argparse
import sys
import time

from tracer.commands._engine_options import add_engine_options, add_trace_options, engine_config_from_args, start_tracing, stop_tracing


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate text with our engine (streams to stdout)")
    parser.add_argument("prompt", help="the prompt (a chat user message unless --raw)")
    parser.add_argument("--raw", action="store_true", help="send the prompt as plain completion text, no chat template")
    parser.add_argument("--system", default=None, help="system message for the chat template")
    add_sampling_options(parser)
    add_engine_options(parser)
    add_trace_options(parser)
    parser.set_defaults(func=run)


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=64)
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=0)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    group.add_argument("--ignore-eos", action="store_true")
    constraint = parser.add_argument_group("structured output (one of)").add_mutually_exclusive_group()
    constraint.add_argument("--json-schema", metavar="FILE", default=None, help="constrain the output to this JSON schema (a .json file)")
    constraint.add_argument("--regex", metavar="R", default=None, help="constrain the output to this regular expression")
    constraint.add_argument("--choice", metavar="A,B,C", default=None, help="constrain the output to one of these comma-separated strings")


def sampling_params_from_args(args: argparse.Namespace):
    from engine.sampling_params import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_tokens=args.max_tokens,
        stop=args.stop,
        ignore_eos=args.ignore_eos,
        structured_outputs=structured_outputs_from_args(args),
    )


def structured_outputs_from_args(args: argparse.Namespace):
    """--json-schema / --regex / --choice as the engine's StructuredOutputsParams (None: unconstrained)."""
    import json
    from pathlib import Path

    from engine.structured_output import StructuredOutputsParams, validate_structured_outputs

    if getattr(args, "json_schema", None):
        path = Path(args.json_schema)
        if not path.is_file():
            raise FileNotFoundError(f"--json-schema: no such file: {path}")
        try:
            schema = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"--json-schema: {path} is not valid JSON: {exc}") from None
        params = StructuredOutputsParams(json=schema)
    elif getattr(args, "regex", None) is not None:
        params = StructuredOutputsParams(regex=args.regex)
    elif getattr(args, "choice", None) is not None:
        choices = [c for c in args.choice.split(",") if c]
        params = StructuredOutputsParams(choice=choices)
    else:
        return None
    validate_structured_outputs(params)  # a clear error before the model loads
    return params


def run(args: argparse.Namespace) -> int:
    traced = start_tracing(args)
    try:
        return _generate(args)
    finally:
        if traced:
            stop_tracing()
            if args.trace:
                print(f"trace written to {args.trace}", file=sys.stderr)


def _generate(args: argparse.Namespace) -> int:
    from engine.llm_engine import LLMEngine

    params = sampling_params_from_args(args)
    config = engine_config_from_args(args)
    print("loading model...", file=sys.stderr, flush=True)
    engine = LLMEngine(config)
    if args.raw:
        prompt_ids = engine.render(prompt=args.prompt)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        prompt_ids = engine.render(messages=messages)
    request = engine.add_request(None, prompt_ids, params)
    start = time.perf_counter()
    first_token_at = None
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if first_token_at is None and out.new_token_ids:
                first_token_at = time.perf_counter()
            sys.stdout.write(out.delta_text)
            sys.stdout.flush()
            if out.finished:
                final = out
    elapsed = time.perf_counter() - start
    sys.stdout.write("\n")
    if final is not None:
        n = len(final.output_token_ids)
        ttft = (first_token_at - start) * 1000 if first_token_at else float("nan")
        print(
            f"[{request.request_id}] {len(prompt_ids)} prompt tokens, {n} output tokens, finish={final.finish_reason}, "
            f"TTFT {ttft:.0f} ms, {n / elapsed:.1f} tok/s",
            file=sys.stderr,
        )
    return 0
