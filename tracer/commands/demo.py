"""`servetrace demo`: the main job on the bundled model (what `make demo` runs)."""
from __future__ import annotations

import argparse

from tracer.commands import generate

DEMO_PROMPT = "In two sentences, what does a KV cache store in a transformer?"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the demo on the bundled model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    generate.register(sub)
    return generate.run(parser.parse_args(["generate", DEMO_PROMPT, "--max-tokens", "80"]))
