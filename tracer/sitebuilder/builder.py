"""walkthroughs/*.md -> OUT/docs (MkDocs docs dir) -> `mkdocs build` -> OUT/site.

Two passes: first every anchor is checked (hops, targets, pins, notes, links, lab and trace
names), and any problem fails the build before anything slow runs; then traces are recorded,
labs run (both cached by inputs) and the pages are written.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tracer.catalog.citations import check_catalog_notes, check_walkthroughs
from tracer.catalog.hops import CATALOG_PATH, CatalogError, load_catalog, load_lock
from tracer.catalog.source import TargetNotFound, locate
from tracer.sitebuilder import render
from tracer.sitebuilder.anchors import AnchorError, CodeRef, load_anchor_lock, merged_lock, resolve_code
from tracer.sitebuilder.experiments import ExperimentError, Experiments, NoExperiments
from tracer.sitebuilder.timeline import render_timeline
from tracer.sitebuilder.upstream import SourceLink, source_links
from tracer.traces.trace_file import read_trace_file
from tracer.walkthroughs.directives import Directive, Walkthrough, load_walkthroughs
from tracer.walkthroughs.errors import Problem, SiteBuildError
from tracer.walkthroughs.notes import notes_of

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE_DIR = REPO / "build" / "cache"
WALKTHROUGHS_DIR = REPO / "walkthroughs"
MKDOCS_CONFIG = REPO / "mkdocs.yml"
ANCHORS_LOCK = WALKTHROUGHS_DIR / "anchors.lock.json"


@dataclass
class BuildOptions:
    out: Path = REPO / "build"
    walkthroughs: Path = WALKTHROUGHS_DIR
    catalog: Path | None = None
    lock: Path | None = None
    anchors_lock: Path | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    run_mkdocs: bool = True
    log: bool = False
    # Runs the labs and records the trace recipes pages ask for (tracer.commands.site hands in
    # tracer.labs'); the default runs none, so such a page is a build problem.
    experiments: Experiments = field(default_factory=NoExperiments)


@dataclass
class BuildReport:
    docs_dir: Path
    site_dir: Path | None
    pages: list[str] = field(default_factory=list)
    anchors: int = 0
    traces: int = 0
    labs: int = 0
    seconds: float = 0.0


class _Checked:
    """What the check pass found per directive, reused by the render pass."""

    def __init__(self) -> None:
        self.code: dict[int, list[CodeRef]] = {}


def _say(options: BuildOptions, text: str) -> None:
    if options.log:
        print(text, file=sys.stderr, flush=True)


def _check(walkthroughs: list[Walkthrough], catalog, lock, experiments: Experiments,
           links: Mapping[str, SourceLink] | None = None) -> tuple[list[Problem], _Checked]:
    problems: list[Problem] = []
    checked = _Checked()
    pages = {w.name for w in walkthroughs} | {"index.md", "hops.md"}
    hop_names = {h.name for h in catalog.hops}
    labs = experiments.lab_names()
    for walkthrough in walkthroughs:
        problems.extend(walkthrough.problems)
        if not walkthrough.meta.get("moves"):
            problems.append(Problem(walkthrough.name, 1, "front matter", "needs 'moves:' (one or more of TTFT, TPOT, throughput, memory)"))
        previous_code: Directive | None = None
        for block in walkthrough.blocks:
            if isinstance(block, str):
                if block.strip():
                    previous_code = None
                continue
            where = (walkthrough.name, block.line, block.text)
            try:
                if block.kind == "code":
                    checked.code[id(block)] = resolve_code(block, catalog, lock, links)
                elif block.kind == "note":
                    hop = block.arg("hop")
                    if hop is not None and hop not in hop_names:
                        raise AnchorError(f"no hop named {hop!r}; hops: {', '.join(sorted(hop_names))}")
                    engine = block.arg("engine")
                    if engine is not None and engine not in catalog.engines:
                        raise AnchorError(f"unknown engine {engine!r}; choose from {', '.join(catalog.engines)}")
                    if not block.body.strip():
                        raise AnchorError("a note needs an indented Markdown body")
                    if previous_code is not None and hop and previous_code.arg("hop") not in (None, hop):
                        raise AnchorError(f"this note (hop={hop}) sits beside a code anchor of hop {previous_code.arg('hop')}")
                    for page in render.linked_pages(block.body):
                        if page not in pages:
                            raise AnchorError(f"links to {page}, which is not a page of the site")
                elif block.kind == "trace":
                    _trace_source(block, walkthrough, experiments)
                elif block.kind == "lab":
                    if len(block.positional) != 1:
                        raise AnchorError("name exactly one lab: `::: lab NAME [key=value ...]`")
                    name = block.positional[0]
                    if name not in labs:
                        raise AnchorError(f"no lab named {name!r}; labs: {', '.join(sorted(labs))}")
                    experiments.check_lab(name, block.args)
            except (AnchorError, ExperimentError, CatalogError) as exc:
                problems.append(Problem(*where, str(exc)))
            if block.kind == "code":
                previous_code = block
            elif block.kind != "note":
                previous_code = None
    return problems, checked


def _trace_source(block: Directive, walkthrough: Walkthrough, experiments: Experiments) -> tuple[str, Path | None]:
    """('recipe', None) or ('file', path): checks the directive names exactly one that exists."""
    recipe, file = block.arg("recipe"), block.arg("file")
    if bool(recipe) == bool(file):
        raise AnchorError("a trace needs exactly one of recipe=NAME or file=PATH (OTLP/JSON lines)")
    if recipe:
        recipes = experiments.recipe_names()
        if recipe not in recipes:
            raise ExperimentError(f"no trace recipe named {recipe!r}; recipes: {', '.join(sorted(recipes))}")
        return recipe, None
    path = (walkthrough.path.parent / file).resolve()
    if not path.is_file():
        raise AnchorError(f"no trace file at {path}")
    return path.name, path


def _render_walkthrough(walkthrough: Walkthrough, checked: _Checked, options: BuildOptions, data_dir: Path, report: BuildReport) -> str:
    parts: list[str] = []
    blocks = walkthrough.blocks
    index = 0
    while index < len(blocks):
        block = blocks[index]
        index += 1
        if isinstance(block, str):
            parts.append(block)
            continue
        if block.kind == "code":
            notes = []
            while index < len(blocks):  # notes right after a code anchor (blank lines allowed) sit beside it
                following = blocks[index]
                if isinstance(following, str) and not following.strip():
                    index += 1
                    continue
                if isinstance(following, Directive) and following.kind == "note":
                    notes.append((following.args, following.body))
                    index += 1
                    continue
                break
            parts.append("\n" + render.render_code(block.text, checked.code[id(block)], notes) + "\n")
            report.anchors += 1
        elif block.kind == "note":
            parts.append("\n" + render.render_note(block.args, block.body) + "\n")
        elif block.kind == "trace":
            parts.append("\n" + _render_trace(block, walkthrough, options, data_dir) + "\n")
            report.traces += 1
        elif block.kind == "lab":
            _say(options, f"  lab {block.positional[0]} ...")
            try:
                result = options.experiments.run_lab(block.positional[0], block.args, options.cache_dir)
            except ExperimentError as exc:
                raise SiteBuildError([Problem(walkthrough.name, block.line, block.text, str(exc))]) from exc
            _say(options, f"  lab {result.name}: {'cached' if result.cached else f'{result.seconds:.1f} s'}")
            parts.append("\n" + render.render_lab(result) + "\n")
            report.labs += 1
    moves = ", ".join(walkthrough.meta.get("moves", []))
    hops = sorted({b.arg("hop") for b in walkthrough.directives() if b.arg("hop")})
    meta = f'<div class="st-meta">Mainly moves: <strong>{moves}</strong>' + (
        " · hops: " + ", ".join(f'<a href="hops.html#{render.hop_id(h)}">{h}</a>' for h in hops) if hops else "") + "</div>\n"
    text = "\n".join(parts)
    # The meta line goes right under the page title.
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("# "):
            lines.insert(i + 1, "\n" + meta)
            break
    else:
        lines.insert(0, meta)
    return "\n".join(lines)


def _render_trace(block: Directive, walkthrough: Walkthrough, options: BuildOptions, data_dir: Path) -> str:
    name, path = _trace_source(block, walkthrough, options.experiments)
    downloads = []
    if path is None:
        _say(options, f"  trace {name} ...")
        try:
            recorded = options.experiments.record_trace(name, options.cache_dir)
        except ExperimentError as exc:
            raise SiteBuildError([Problem(walkthrough.name, block.line, block.text, str(exc))]) from exc
        description, commands, path = recorded.description, recorded.commands, recorded.trace
        if recorded.workload is not None:
            shutil.copy(recorded.workload, data_dir / f"{name}.workload.jsonl")
            downloads.append(("workload.jsonl", f"data/{name}.workload.jsonl"))
    else:
        description, commands = block.arg("title", f"Recorded trace {path.name}."), [f"# from {path.name}"]
    shutil.copy(path, data_dir / f"{name}.trace.jsonl")
    downloads.insert(0, ("trace.jsonl (OTLP/JSON lines)", f"data/{name}.trace.jsonl"))
    trace = read_trace_file(path)
    try:
        timeline = render_timeline(trace, max_requests=int(block.arg("max_requests", "12")))
    except ValueError as exc:
        raise SiteBuildError([Problem(walkthrough.name, block.line, block.text, str(exc))]) from exc
    return render.render_trace(name, block.arg("title", description), timeline, commands, downloads)


def _hops_page(catalog, walkthroughs: list[Walkthrough]) -> str:
    notes = notes_of(walkthroughs)
    hops = []
    for hop in catalog.hops:
        rows = []
        for engine, targets in hop.targets.items():
            for target in targets:
                try:
                    located = locate(target.spec)
                    where = f"{located.relative_file()}:{located.line}"
                except TargetNotFound as exc:
                    where = f"not found: {exc}"
                note = ("not called by a live server. " if not target.live else "") + target.note
                rows.append({"engine": engine, "qualname": target.spec, "where": where, "note": note.replace("|", "\\|")})
        hops.append({"name": hop.name, "meaning": hop.meaning, "scope": hop.scope, "cuda_timed": hop.cuda_timed,
                     "rows": rows, "notes": notes.get(hop.name, [])})
    return render.render_markdown_page("hops.md.j2", hops=hops)


def _mkdocs_config(options: BuildOptions, docs: Path, site: Path, walkthroughs: list[Walkthrough]) -> Path:
    config = yaml.safe_load(MKDOCS_CONFIG.read_text())
    config["docs_dir"] = str(docs.resolve())
    config["site_dir"] = str(site.resolve())
    config["nav"] = [{"Home": "index.md"}] + [{w.title: w.name} for w in walkthroughs] + [{"Hop catalog": "hops.md"}]
    path = options.out / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build_site(options: BuildOptions | None = None) -> BuildReport:
    options = options or BuildOptions()
    started = time.perf_counter()
    try:
        catalog = load_catalog(options.catalog)
        lock = merged_lock(load_lock(options.lock), load_anchor_lock(options.anchors_lock or options.walkthroughs / "anchors.lock.json"))
        links = source_links(options.catalog)
    except CatalogError as exc:
        raise SiteBuildError(str(exc)) from None
    walkthroughs = load_walkthroughs(options.walkthroughs)
    if not walkthroughs:
        raise SiteBuildError(f"no walkthroughs (*.md) in {options.walkthroughs}")
    _say(options, f"checking {len(walkthroughs)} walkthroughs ...")
    problems, checked = _check(walkthroughs, catalog, lock, options.experiments, links)
    # Every upstream file:line / qualified name the pages (and the hop catalog page's notes) cite
    # must be defined where they say, in the pinned version (tracer.catalog.citations).
    citations = check_walkthroughs(options.walkthroughs, catalog)
    citations.extend(check_catalog_notes(Path(options.catalog or CATALOG_PATH), catalog))
    problems.extend(Problem(c.file, c.line, c.citation, c.message) for c in citations.problems)
    if problems:
        raise SiteBuildError(problems)

    docs = options.out / "docs"
    site = options.out / "site"
    shutil.rmtree(docs, ignore_errors=True)
    (docs / "data").mkdir(parents=True)
    (docs / "assets").mkdir()
    for asset in render.ASSETS.iterdir():
        shutil.copy(asset, docs / "assets" / asset.name)
    (docs / "assets" / "pygments.css").write_text(render.pygments_css())
    report = BuildReport(docs, None)
    summaries = []
    for walkthrough in walkthroughs:
        _say(options, f"rendering {walkthrough.name}")
        (docs / walkthrough.name).write_text(_render_walkthrough(walkthrough, checked, options, docs / "data", report))
        report.pages.append(walkthrough.name)
        summaries.append({"title": walkthrough.title, "name": walkthrough.name, "moves": walkthrough.meta.get("moves", []),
                          "hops": sorted({d.arg("hop") for d in walkthrough.directives() if d.arg("hop")})})
    versions = {name: engine.installed_version() or "not installed" for name, engine in catalog.engines.items()}
    (docs / "index.md").write_text(render.render_markdown_page(
        "index.md.j2", walkthroughs=summaries, versions=versions, anchors=report.anchors, traces=report.traces, labs=report.labs))
    (docs / "hops.md").write_text(_hops_page(catalog, walkthroughs))
    report.pages += ["index.md", "hops.md"]

    if options.run_mkdocs:
        config = _mkdocs_config(options, docs, site, walkthroughs)
        _say(options, f"mkdocs build -f {config}")
        completed = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(config)],
                                   capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
        if completed.returncode != 0:
            lines = (completed.stdout + completed.stderr).splitlines()
            reasons = [line for line in lines if line.startswith(("WARNING", "ERROR"))] or lines[-20:]
            raise SiteBuildError(f"mkdocs build --strict failed (exit {completed.returncode}):\n" + "\n".join(reasons))
        report.site_dir = site
    report.seconds = time.perf_counter() - started
    return report
