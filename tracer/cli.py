"""The `servetrace` command line: discovers subcommands in tracer/commands/."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from engine.omp_env import use_bounded_omp_wait

use_bounded_omp_wait()  # before torch loads (the engine thread shares the cores with the HTTP server, a client)

import tracer.commands


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit status 2."""


# The parser whose usage a bad flag prints: every (sub)parser sets it, and argparse copies a
# nested parser's defaults over its parent's, so the deepest subcommand named wins.
USAGE_PARSER = "_usage_parser"


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
    _add_common_options(parser, top=True)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--verbose and the usage pointer on this parser and every subcommand below it."""
    parser.set_defaults(**{USAGE_PARSER: parser})
    if not any("--verbose" in action.option_strings for action in parser._actions):
        # SUPPRESS: a subcommand's default must not overwrite `servetrace --verbose CMD`.
        parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS if not top else False,
                            help="show upstream warnings (vLLM, SGLang, torch) instead of counting them")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                _add_common_options(sub)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown flag is reported with the usage of the subcommand it
    was given to (`servetrace check -v`), not the top-level usage."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        target: argparse.ArgumentParser = getattr(args, USAGE_PARSER, parser)
        target.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


# `pip install servetrace` brings only tracing and the explorer (pyproject's dependencies), so that
# it can go into a user's vLLM or SGLang environment unchanged; these come with an extra.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "gguf", "transformers", "tokenizers", "numpy", "safetensors", "fastapi",
                     "starlette", "uvicorn", "openai", "jinja2"), "engine"),
    **dict.fromkeys(("markdown", "mkdocs", "material", "pymdownx"), "site"),
}


def missing_extra_hint(exc: ModuleNotFoundError, command: str | None) -> str | None:
    """The line to print when a command needs a package of an extra that is not installed (None
    for any other missing module: that is a bug, and its traceback is shown)."""
    top = (exc.name or "").partition(".")[0]
    extra = "site" if command == "site" and top in EXTRA_OF_MODULE else EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return (f"needs {top}, which is not installed here: pip install 'servetrace[{extra}]' "
            f"(tui, hops, check and export work without it)")


def main(argv: list[str] | None = None) -> int:
    from tracer.commands._upstream_noise import UpstreamNoise, print_summary

    # Before the parser imports the commands (and they torch, vLLM, SGLang): loggers created
    # from here on are filtered too. Until --verbose is parsed, count and hold nothing back:
    # nothing upstream logs while argparse runs.
    noise = UpstreamNoise(verbose="--verbose" in (sys.argv[1:] if argv is None else argv)).install()
    try:
        parser = build_parser()
        args = parse_args(parser, argv)
        noise.verbose = bool(getattr(args, "verbose", False))
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        try:
            return int(args.func(args) or 0)
        except ModuleNotFoundError as exc:
            hint = missing_extra_hint(exc, args.command)
            if hint is None:
                raise
            print(f"servetrace {args.command}: {hint}", file=sys.stderr)
            return 2
        except (UserError, FileNotFoundError, ValueError) as exc:
            print(f"servetrace {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        finally:
            print_summary(noise)
    finally:
        noise.uninstall()


if __name__ == "__main__":
    sys.exit(main())
