"""Resolve every catalog target in the installed source and compare it with its pin.

States: ok, moved (same source, other line), drift (source changed), version (the installed
package is not the pinned version), unpinned (no pin yet), unresolved (the target is gone),
not-installed (the engine's package is absent: reported, not a failure).
"""
from __future__ import annotations

from dataclasses import dataclass

from tracer.catalog.hops import Catalog, Lock, Pin, Target
from tracer.catalog.source import Located, TargetNotFound, changed_line_ranges, locate

FAILING = ("drift", "unresolved", "unpinned", "version")


@dataclass
class TargetStatus:
    target: Target
    state: str
    detail: str = ""
    located: Located | None = None

    @property
    def where(self) -> str:
        return f"{self.located.relative_file()}:{self.located.line}" if self.located else "-"

    @property
    def failed(self) -> bool:
        return self.state in FAILING


def _drift_detail(pin: Pin, located: Located) -> str:
    detail = f"sha256 {pin.sha256[:12]} -> {located.sha256[:12]}"
    if pin.lines:
        added, removed, ranges = changed_line_ranges(pin.lines, located.source)
        detail += f"; +{added} -{removed} lines"
        if ranges:
            first, last = ranges[0]
            new_lines = located.source.splitlines()
            shown = new_lines[first].strip()
            span = f"{located.line + first}" if first == last else f"{located.line + first}-{located.line + last}"
            detail += f"; first change at line {span}: {shown[:100]!r}"
    if (pin.file, pin.line) != (located.relative_file(), located.line):
        detail += f"; was at {pin.file}:{pin.line}"
    return detail


def check_target(target: Target, catalog: Catalog, lock: Lock) -> TargetStatus:
    engine = catalog.engines[target.engine]
    try:
        located = locate(target.spec)
    except TargetNotFound as exc:
        if engine.installed_version() is None and target.engine != "mini":
            return TargetStatus(target, "not-installed", f"{engine.package} is not installed")
        return TargetStatus(target, "unresolved", str(exc))
    if not engine.pinned:
        return TargetStatus(target, "ok", "not pinned (our engine)", located)
    pin = lock.pin(target.engine, target.spec)
    installed = engine.installed_version()
    if engine.version and installed != engine.version:
        return TargetStatus(target, "version", f"{engine.package} {installed} installed, catalog is for {engine.version}", located)
    if pin is None:
        return TargetStatus(target, "unpinned", "no pin; run `servetrace check --update`", located)
    if pin.sha256 != located.sha256:
        return TargetStatus(target, "drift", _drift_detail(pin, located), located)
    if (pin.file, pin.line) != (located.relative_file(), located.line):
        return TargetStatus(target, "moved", f"same source, was at {pin.file}:{pin.line}", located)
    return TargetStatus(target, "ok", "", located)


def check_catalog(catalog: Catalog, lock: Lock, engine: str | None = None) -> list[TargetStatus]:
    return [check_target(target, catalog, lock) for target in catalog.targets(engine)]


def update_lock(catalog: Catalog, lock: Lock, engine: str | None = None) -> tuple[Lock, list[TargetStatus]]:
    """Re-pin every resolvable target of the pinned engines; returns the new lock and what failed."""
    problems = []
    for name, spec in catalog.engines.items():
        if not spec.pinned or (engine is not None and name != engine):
            continue
        pins: dict[str, Pin] = {}
        for target in catalog.targets(name):
            try:
                located = locate(target.spec)
            except TargetNotFound as exc:
                problems.append(TargetStatus(target, "unresolved", str(exc)))
                continue
            pins[target.spec] = Pin(located.sha256, located.relative_file(), located.line, located.line_hashes)
        lock.pins[name] = pins
        lock.versions[name] = spec.installed_version() or spec.version
    return lock, problems
