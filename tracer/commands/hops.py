"""`servetrace hops`: the hop catalog resolved to file:line; `servetrace check`: pins and drift."""
from __future__ import annotations

import argparse
import json
import sys

from tracer.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    hops = subparsers.add_parser("hops", help="the hop catalog, each target resolved to file:line")
    hops.add_argument("--engine", help="only this engine (mini, vllm, sglang)")
    hops.add_argument("--hop", help="only this hop (e.g. kv.allocate)")
    hops.add_argument("--json", action="store_true", help="print JSON instead of a table")
    hops.add_argument("--catalog", help="a catalog file other than the packaged tracer/catalog/hops.yaml")
    hops.set_defaults(func=run_hops)

    check = subparsers.add_parser("check", help="verify every target resolves and matches its pinned source hash")
    check.add_argument("--engine", help="only this engine")
    check.add_argument("--update", action="store_true", help="re-pin the installed sources (writes the lock file)")
    check.add_argument("--catalog", help="a catalog file other than the packaged tracer/catalog/hops.yaml")
    check.add_argument("--lock", help="a pin file other than the packaged tracer/catalog/hops.lock.json")
    check.set_defaults(func=run_check)


def _catalog(args: argparse.Namespace):
    from tracer.catalog.hops import CatalogError, load_catalog

    try:
        catalog = load_catalog(args.catalog)
    except (CatalogError, OSError) as exc:
        raise UserError(str(exc)) from None
    if args.engine is not None and args.engine not in catalog.engines:
        raise UserError(f"unknown engine {args.engine!r}; choose from {', '.join(catalog.engines)}")
    return catalog


def _resolved_version(engine) -> dict:
    """Which installed version the file:line column was read from, and whether the catalog pins it."""
    version = engine.installed_version()
    if not engine.pinned:
        return {"installed": None, "pinned": False, "says": "our engine (not pinned)"}
    if version is None:
        return {"installed": None, "pinned": False,
                "says": f"{engine.package} is not installed; the catalog pins {', '.join(engine.versions)}"}
    pinned = version in engine.versions
    use = engine.uses.get(version, "")
    says = (f"file:line read from {engine.installed_distribution()} {version} "
            + (f"(pinned: {use})" if pinned else f"(NOT a pinned version: the catalog pins {', '.join(engine.versions)})"))
    return {"installed": version, "distribution": engine.installed_distribution(), "pinned": pinned, "says": says}


def run_hops(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tracer.catalog.source import TargetNotFound, locate

    catalog = _catalog(args)
    hops = [h for h in catalog.hops if args.hop is None or h.name == args.hop]
    if not hops:
        raise UserError(f"no hop named {args.hop!r}; hops: {', '.join(h.name for h in catalog.hops)}")
    engines = [args.engine] if args.engine else list(catalog.engines)
    rows = []
    for hop in hops:
        for engine in engines:
            targets = hop.targets.get(engine, ())
            if not targets:
                rows.append({"hop": hop.name, "scope": hop.scope, "engine": engine, "target": None, "where": None, "note": "no hook"})
            for target in targets:
                try:
                    located = locate(target.spec)
                    where = f"{located.relative_file()}:{located.line}"
                except TargetNotFound as exc:
                    where = f"NOT FOUND: {exc}"
                note = ("(not called by a live server) " if not target.live else "") + target.note
                rows.append({"hop": hop.name, "scope": hop.scope, "engine": engine, "target": target.spec, "where": where, "note": note.strip()})
    if args.json:
        json.dump({"hops": [{"name": h.name, "scope": h.scope, "meaning": h.meaning} for h in hops], "targets": rows,
                   "engines": {name: _resolved_version(catalog.engines[name]) for name in engines}}, sys.stdout, indent=1)
        print()
        return 0
    from tracer.commands._console import stdout_console

    console = stdout_console(json_flag="--json")  # piped: no wrapping at 80 columns
    table = Table(title="servetrace hop catalog", show_lines=False)
    for column in ("hop", "engine", "target", "file:line", "note"):
        table.add_column(column, overflow="fold")
    previous_hop = None
    for row in rows:
        hop_cell = row["hop"] if row["hop"] != previous_hop else ""
        if row["hop"] != previous_hop and previous_hop is not None:
            table.add_section()
        previous_hop = row["hop"]
        where = row["where"] or ""
        style = "red" if where.startswith("NOT FOUND") else None
        qualname = row["target"].split(":", 1)[1] if row["target"] else "-"  # the file names the module
        table.add_row(hop_cell, row["engine"], qualname, where, row["note"], style=style)
    console.print(table)
    for name in engines:
        resolved = _resolved_version(catalog.engines[name])
        console.print(f"[bold]{name}[/]: {resolved['says']}")
    for hop in hops:
        console.print(f"[bold]{hop.name}[/] ({hop.scope}): {hop.meaning}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from tracer.catalog.check import check_catalog, update_lock
    from tracer.catalog.hops import LOCK_PATH, CatalogError, load_lock, save_lock

    catalog = _catalog(args)
    from tracer.commands._console import stdout_console

    console = stdout_console(highlight=False)  # piped: one finding per line, unwrapped
    try:
        lock = load_lock(args.lock)
    except CatalogError as exc:
        if not args.update:
            raise UserError(str(exc)) from None
        from tracer.catalog.hops import Lock

        lock = Lock()
    if args.update:
        lock, problems = update_lock(catalog, lock, args.engine)
        path = args.lock or LOCK_PATH
        save_lock(lock, path)
        pinned = sum(len(pins) for name, pins in lock.pins.items() if args.engine in (None, name))
        console.print(f"pinned {pinned} targets in {path}")
        for status in problems:
            console.print(f"[red]unresolved[/] {status.target.hop} {status.target.engine} {status.target.spec}: {status.detail}")
        return 1 if problems else 0

    statuses = check_catalog(catalog, lock, args.engine)
    failed = [s for s in statuses if s.failed]
    for status in statuses:
        if status.state in ("ok", "moved"):
            continue
        t = status.target
        colour = "red" if status.failed else "yellow"
        console.print(f"[{colour}]{status.state}[/]: hop {t.hop}, {t.engine} target {t.spec} ({status.where}): {status.detail}")
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    console.print(f"{len(statuses)} targets: {summary}")
    cited = _check_citations(args, console)
    if failed:
        console.print("[red]drift or unresolved targets[/]: review them, update tracer/catalog/hops.yaml, then `servetrace check --update`")
    return 1 if failed or not cited else 0


def _check_citations(args: argparse.Namespace, console) -> bool:
    """Citations in walkthroughs, hops.yaml notes and engine docstrings; False if any is wrong."""
    from pathlib import Path

    import tracer
    from tracer.catalog.citations import check_repository

    report = check_repository(Path(tracer.__file__).resolve().parent.parent, Path(args.catalog) if args.catalog else None)
    for problem in report.problems:
        console.print(f"[red]citation[/]: {problem}")
    for why, count in sorted(report.skipped.items()):
        console.print(f"[yellow]skipped[/] {count} citation(s): {why}")
    console.print(f"{report.checked} citations checked: {len(report.problems)} wrong, {sum(report.skipped.values())} skipped")
    return report.ok
