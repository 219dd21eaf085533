"""The `servetrace` command line: discovers subcommands in tracer/commands/."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

# Before torch loads: spinning OpenMP threads slow every matmul 10-50x when another thread
# (the HTTP server, a client) shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tracer.commands


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servetrace",
        description="Trace and read how LLM serving engines (ours, vLLM, SGLang) serve a request.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(tracer.commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):  # shared helpers of the commands, not subcommands
            continue
        module = importlib.import_module(f"tracer.commands.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"servetrace {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
