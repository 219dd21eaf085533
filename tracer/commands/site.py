"""`servetrace site build|serve|lab|trace|pin`: the documentation site of annotated walkthroughs."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tracer.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("site", help="build or preview the documentation site (walkthroughs -> MkDocs)")
    sub = parser.add_subparsers(dest="site_command", metavar="ACTION")

    build = sub.add_parser("build", help="render walkthroughs/ into OUT/docs and run `mkdocs build` into OUT/site")
    _common(build)
    build.add_argument("--no-mkdocs", action="store_true", help="only write the MkDocs docs dir")
    build.set_defaults(func=run_build)

    serve = sub.add_parser("serve", help="build, then serve OUT/site over HTTP")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001, help="default 8001 (`servetrace serve` takes 8000)")
    serve.set_defaults(func=run_serve)

    lab = sub.add_parser("lab", help="run one lab (the experiment behind a walkthrough's table) and print its tables")
    lab.add_argument("name", nargs="?", help="lab name (omit to list them)")
    lab.add_argument("params", nargs="*", help="key=value parameters")
    lab.set_defaults(func=run_lab_command)

    trace = sub.add_parser("trace", help="record one trace recipe (what a walkthrough's timeline shows)")
    trace.add_argument("name", nargs="?", help="recipe name (omit to list them)")
    trace.add_argument("--out", default="trace.jsonl", help="where to write the OTLP/JSON-lines trace")
    trace.set_defaults(func=run_trace)

    pin = sub.add_parser("pin", help="pin the upstream targets walkthroughs name outside the catalog (walkthroughs/anchors.lock.json)")
    pin.add_argument("--walkthroughs", default=None)
    pin.set_defaults(func=run_pin)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="build directory (default: build/; docs in OUT/docs, site in OUT/site)")
    parser.add_argument("--walkthroughs", default=None, help="walkthroughs directory (default: walkthroughs/)")
    parser.add_argument("--cache", default=None, help="lab/trace result cache (default: build/cache)")
    parser.add_argument("--lock", default=None, help="catalog pin file (default: tracer/catalog/hops.lock.json)")


class LabExperiments:
    """tracer.labs as the site builder's Experiments (tracer.sitebuilder.experiments): the
    builder imports neither labs, replay nor engine; this command runs them for it. The labs are
    imported on first use, so that `servetrace --help` does not load the engine."""

    def lab_names(self) -> list[str]:
        from tracer.labs.index import registry

        return list(registry())

    def check_lab(self, name: str, params: dict[str, str]) -> None:
        from tracer.labs.index import registry
        from tracer.labs.registry import LabError, parse_params
        from tracer.sitebuilder.experiments import ExperimentError

        try:
            parse_params(registry()[name], params)
        except (KeyError, LabError) as exc:
            raise ExperimentError(str(exc)) from None

    def run_lab(self, name: str, params: dict[str, str], cache_dir: Path):
        from tracer.labs.index import run_lab
        from tracer.labs.registry import LabError
        from tracer.sitebuilder.experiments import ExperimentError

        try:
            return run_lab(name, params, cache_dir)
        except LabError as exc:
            raise ExperimentError(str(exc)) from exc

    def recipe_names(self) -> list[str]:
        from tracer.labs.recipes import RECIPES

        return list(RECIPES)

    def record_trace(self, name: str, cache_dir: Path):
        from tracer.labs.recipes import RECIPES, RecipeError, record_trace
        from tracer.sitebuilder.experiments import ExperimentError, RecordedTrace

        try:
            recorded = record_trace(name, cache_dir)
        except RecipeError as exc:
            raise ExperimentError(str(exc)) from exc
        return RecordedTrace(RECIPES[name].description + ".", recorded.commands, recorded.trace, recorded.workload)


def _build(args: argparse.Namespace, run_mkdocs: bool = True):
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    from tracer.sitebuilder.builder import BuildOptions, build_site

    options = BuildOptions(log=True, run_mkdocs=run_mkdocs, experiments=LabExperiments())
    if args.out:
        options.out = Path(args.out)
    if args.walkthroughs:
        options.walkthroughs = Path(args.walkthroughs)
    if args.cache:
        options.cache_dir = Path(args.cache)
    if args.lock:
        options.lock = Path(args.lock)
    return build_site(options)


def run_build(args: argparse.Namespace) -> int:
    from tracer.walkthroughs.errors import SiteBuildError

    try:
        report = _build(args, run_mkdocs=not args.no_mkdocs)
    except SiteBuildError as exc:
        print(f"servetrace site build: {exc}", file=sys.stderr)
        return 1
    where = report.site_dir or report.docs_dir
    print(f"built {len(report.pages)} pages ({report.anchors} code anchors, {report.traces} timelines, "
          f"{report.labs} lab tables) in {report.seconds:.1f} s: {where}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import functools
    import http.server

    from tracer.commands._ports import ensure_free
    from tracer.walkthroughs.errors import SiteBuildError

    ensure_free(args.host, args.port)  # a busy port fails before the whole site is rebuilt

    try:
        report = _build(args)
    except SiteBuildError as exc:
        print(f"servetrace site serve: {exc}", file=sys.stderr)
        return 1
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(report.site_dir))
    with http.server.ThreadingHTTPServer((args.host, args.port), handler) as server:
        print(f"serving {report.site_dir} at http://{args.host}:{server.server_address[1]}/index.html (Ctrl-C stops)")
        server.serve_forever()
    return 0


def run_lab_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    from rich.console import Console
    from rich.table import Table

    from tracer.labs.index import registry, run_lab
    from tracer.labs.registry import LabError

    console = Console()
    if not args.name:
        for lab in registry().values():
            console.print(f"{lab.name}: {lab.title} (parameters: {', '.join(f'{k}={v}' for k, v in lab.defaults.items()) or 'none'})")
        return 0
    given = {}
    for word in args.params:
        key, sep, value = word.partition("=")
        if not sep:
            raise UserError(f"parameters are key=value, got {word!r}")
        given[key] = value
    try:
        result = run_lab(args.name, given)
    except LabError as exc:
        raise UserError(str(exc)) from None
    for data in result.tables:
        table = Table(title=data.title, caption=data.caption)
        for column in data.columns:
            table.add_column(column, overflow="fold")
        for row in data.rows:
            table.add_row(*(str(cell) for cell in row))
        console.print(table)
    console.print(f"[dim]{result.command}: {result.seconds:.1f} s on {result.environment}[/dim]")
    return 0


def run_trace(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    from tracer.labs.recipes import RECIPES, RecipeError, record_trace

    if not args.name:
        for recipe in RECIPES.values():
            print(f"{recipe.name}: {recipe.description}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        try:
            recorded = record_trace(args.name, Path(scratch))
        except RecipeError as exc:
            raise UserError(str(exc)) from None
        shutil.copy(recorded.trace, args.out)
        if recorded.workload is not None:
            shutil.copy(recorded.workload, Path(args.out).with_suffix(".workload.jsonl"))
    print(f"wrote {args.out}")
    return 0


def run_pin(args: argparse.Namespace) -> int:
    from tracer.catalog.hops import load_catalog
    from tracer.sitebuilder.anchors import pin_walkthrough_targets
    from tracer.sitebuilder.builder import WALKTHROUGHS_DIR
    from tracer.walkthroughs.directives import load_walkthroughs

    directory = Path(args.walkthroughs) if args.walkthroughs else WALKTHROUGHS_DIR
    count, problems = pin_walkthrough_targets(load_walkthroughs(directory), load_catalog(), directory / "anchors.lock.json")
    print(f"pinned {count} walkthrough targets in {directory / 'anchors.lock.json'}")
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0
