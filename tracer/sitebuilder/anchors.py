"""Code anchors: `::: code hop=...` / `::: code target=ENGINE:module:Qual.name` -> live source.

The source comes from the installed package (tracer.catalog.source.locate: file, line, text), and every
upstream target is checked against its pin with the catalog's own check (tracer.catalog.check):
catalog targets against tracer/catalog/hops.lock.json, targets only a walkthrough names against
walkthroughs/anchors.lock.json (same format; `servetrace site pin` writes it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tracer.catalog.check import check_target
from tracer.catalog.hops import Catalog, Lock, Pin, Target, load_lock, save_lock
from tracer.catalog.source import TargetNotFound, locate
from tracer.sitebuilder.upstream import SourceLink
from tracer.walkthroughs.directives import Directive, Walkthrough

WALKTHROUGH_HOP = "(walkthrough)"  # the hop name a target outside the catalog is checked under
# How the upstream projects spell their names on a page; any other catalog engine shows its
# catalog name, and an unpinned engine (ours, in engine/) is "ours".
ENGINE_SPELLINGS = {"vllm": "vLLM", "sglang": "SGLang"}


class AnchorError(ValueError):
    """A code anchor names no hop, engine or target that exists, or its upstream source drifted."""


@dataclass(frozen=True)
class CodeRef:
    engine: str
    version: str | None
    spec: str
    hop: str | None
    file: str  # e.g. vllm/v1/core/block_pool.py
    line: int  # the function's first line in that file
    end_line: int
    first_shown: int  # the first line shown (lines=A-B crops the function)
    source: str  # the lines shown
    state: str  # ok / moved / not pinned (mini)
    sha256: str
    catalog_note: str = ""
    live: bool = True
    pinned: bool = True  # the catalog pins this engine (an upstream one)
    url: str | None = None  # the shown lines at the installed version's release on GitHub (catalog `source`)

    @property
    def engine_label(self) -> str:
        label = ENGINE_SPELLINGS.get(self.engine, self.engine) if self.pinned else "ours"
        return f"{label} {self.version}" if self.version else label

    @property
    def qualname(self) -> str:
        return self.spec.split(":", 1)[1]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.first_shown}"


def merged_lock(catalog_lock: Lock, anchors_lock: Lock) -> Lock:
    """Catalog pins win over walkthrough pins for the same target."""
    pins = {engine: dict(p) for engine, p in anchors_lock.pins.items()}
    for engine, catalog_pins in catalog_lock.pins.items():
        pins.setdefault(engine, {}).update(catalog_pins)
    versions = {**anchors_lock.versions, **catalog_lock.versions}
    return Lock(versions=versions, pins=pins)


def _catalog_target(catalog: Catalog, engine: str, spec: str) -> Target | None:
    for target in catalog.targets(engine):
        if target.spec == spec:
            return target
    return None


def _parse_lines(text: str | None, length: int) -> tuple[int, int]:
    if text is None:
        return 1, length
    first, sep, last = text.partition("-")
    try:
        start, end = int(first), int(last) if sep else int(first)
    except ValueError:
        raise AnchorError(f"lines={text!r} is not A-B (1-based lines of the function)") from None
    if not 1 <= start <= end <= length:
        raise AnchorError(f"lines={text} is outside the function's {length} lines")
    return start, end


def targets_of(directive: Directive, catalog: Catalog) -> list[Target]:
    """The catalog targets (or the one ad-hoc target) a code directive names."""
    hop_name, target_text = directive.arg("hop"), directive.arg("target")
    if bool(hop_name) == bool(target_text):
        raise AnchorError("a code anchor needs exactly one of hop=NAME or target=ENGINE:module:Qualified.name")
    if target_text:
        engine, sep, spec = target_text.partition(":")
        if not sep or engine not in catalog.engines:
            raise AnchorError(f"target must start with an engine ({', '.join(catalog.engines)}), e.g. vllm:vllm.v1.core.block_pool:BlockPool.touch")
        module, sep, qualname = spec.partition(":")
        if not sep or not module or not qualname:
            raise AnchorError(f"{spec!r} is not 'module:Qualified.name'")
        return [_catalog_target(catalog, engine, spec) or Target(WALKTHROUGH_HOP, engine, spec)]
    try:
        hop = catalog.hop(hop_name)
    except KeyError as exc:
        raise AnchorError(str(exc.args[0])) from None
    engines_text = directive.arg("engines")
    engines = [e.strip() for e in engines_text.split(",") if e.strip()] if engines_text else [e for e, t in hop.targets.items() if t]
    unknown = [e for e in engines if e not in catalog.engines]
    if unknown:
        raise AnchorError(f"unknown engine(s) {unknown}; choose from {', '.join(catalog.engines)}")
    found = []
    for engine in engines:
        targets = list(hop.targets.get(engine, ()))
        only = directive.arg("only")
        if only:
            targets = [t for t in targets if t.qualname == only or t.qualname.endswith("." + only)]
        if not targets:
            what = f" matching only={only}" if only else ""
            raise AnchorError(f"hop {hop.name} has no {engine} target{what} in the catalog")
        found.extend(targets)
    return found


def resolve_code(directive: Directive, catalog: Catalog, lock: Lock, links: Mapping[str, SourceLink] | None = None) -> list[CodeRef]:
    """The panes of a code directive; `links` (tracer.sitebuilder.upstream.source_links) adds each
    upstream pane's GitHub link at the version installed, the version whose source the pane shows."""
    refs = []
    for target in targets_of(directive, catalog):
        engine = catalog.engines[target.engine]
        status = check_target(target, catalog, lock)
        if status.failed or status.state == "not-installed":
            hint, detail = "", status.detail
            if status.state == "unpinned" and target.hop == WALKTHROUGH_HOP:
                detail = "no pin in walkthroughs/anchors.lock.json"
            if status.state in ("drift", "unpinned") and target.hop == WALKTHROUGH_HOP:
                hint = " (review the walkthrough's notes, then `servetrace site pin`)"
            elif status.state in ("drift", "unpinned", "version"):
                hint = " (review the hop, then `servetrace check --update`)"
            raise AnchorError(f"{status.state}: {target.engine} target {target.spec} ({status.where}): {detail}{hint}")
        located = status.located
        assert located is not None
        source_lines = located.source.splitlines(keepends=True)
        start, end = _parse_lines(directive.arg("lines"), len(source_lines))
        version = engine.installed_version() if engine.pinned else None
        link = (links or {}).get(target.engine)
        file = located.relative_file()
        url = link.url(version, file, located.line + start - 1, located.line + end - 1) if link and version else None
        refs.append(CodeRef(
            engine=target.engine,
            version=version,
            pinned=engine.pinned,
            spec=target.spec,
            hop=None if target.hop == WALKTHROUGH_HOP else target.hop,
            file=file,
            line=located.line,
            end_line=located.end_line,
            first_shown=located.line + start - 1,
            source="".join(source_lines[start - 1 : end]),
            state=status.state if engine.pinned else "not pinned (our engine)",
            sha256=located.sha256,
            catalog_note=target.note,
            live=target.live,
            url=url,
        ))
    return refs


def pin_walkthrough_targets(walkthroughs: list[Walkthrough], catalog: Catalog, path: Path) -> tuple[int, list[str]]:
    """Pin every upstream target a walkthrough names that the catalog does not; returns (count, problems)."""
    lock = Lock()
    problems = []
    for walkthrough in walkthroughs:
        for directive in walkthrough.directives("code"):
            try:
                targets = targets_of(directive, catalog)
            except AnchorError as exc:
                problems.append(f"{walkthrough.name}:{directive.line}: {exc}")
                continue
            for target in targets:
                engine = catalog.engines[target.engine]
                if target.hop != WALKTHROUGH_HOP or not engine.pinned:
                    continue
                try:
                    located = locate(target.spec)
                except TargetNotFound as exc:
                    problems.append(f"{walkthrough.name}:{directive.line}: {exc}")
                    continue
                lock.pins.setdefault(target.engine, {})[target.spec] = Pin(
                    located.sha256, located.relative_file(), located.line, located.line_hashes)
                lock.versions[target.engine] = engine.installed_version() or engine.version
    save_lock(lock, path)
    return sum(len(p) for p in lock.pins.values()), problems


def load_anchor_lock(path: Path) -> Lock:
    return load_lock(path)
