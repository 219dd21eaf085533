"""Resolve every catalog target in the installed source and compare it with its pin.

Each target is compared with the pin of the INSTALLED version (an engine pins several: vLLM 0.33.0
for replay and 0.32.0 for the live CPU build). States: ok, moved (same source, other line), drift
(source changed), version (the installed version is not one the catalog pins: hooks still install
wherever targets resolve), unpinned (no pin yet), unresolved (the target is gone), not-installed
(the engine's package is absent: reported, not a failure).
"""
from __future__ import annotations

from dataclasses import dataclass

from tracer.catalog.hops import Catalog, Lock, Pin, Target, lock_section
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
        if engine.pinned and engine.installed_version() is None:  # an upstream engine not installed here
            return TargetStatus(target, "not-installed", f"{engine.package} is not installed")
        return TargetStatus(target, "unresolved", str(exc))
    if not engine.pinned:
        return TargetStatus(target, "ok", "not pinned (our engine)", located)
    installed = engine.installed_version()
    if installed not in engine.versions:
        return TargetStatus(
            target, "version",
            f"{engine.installed_distribution()} {installed} installed; the catalog pins {', '.join(engine.versions)}", located,
        )
    pin = lock.pin(target.engine, target.spec, installed)
    if pin is None:
        return TargetStatus(target, "unpinned", f"no pin for {engine.package} {installed}; run `servetrace check --update`", located)
    if pin.sha256 != located.sha256:
        return TargetStatus(target, "drift", _drift_detail(pin, located), located)
    if (pin.file, pin.line) != (located.relative_file(), located.line):
        return TargetStatus(target, "moved", f"same source, was at {pin.file}:{pin.line}", located)
    return TargetStatus(target, "ok", "", located)


def check_catalog(catalog: Catalog, lock: Lock, engine: str | None = None) -> list[TargetStatus]:
    return [check_target(target, catalog, lock) for target in catalog.pinned_targets(engine)]


def update_lock(catalog: Catalog, lock: Lock, engine: str | None = None) -> tuple[Lock, list[TargetStatus]]:
    """Re-pin every resolvable target of the pinned engines at their INSTALLED version (the
    sections of other pinned versions are kept); returns the new lock and what failed."""
    problems = []
    for name, spec in catalog.engines.items():
        if not spec.pinned or (engine is not None and name != engine):
            continue
        installed = spec.installed_version()
        if installed is None:
            continue  # nothing to read pins from; keep what the lock has
        if installed not in spec.versions:
            raise ValueError(
                f"{spec.installed_distribution()} {installed} is installed but the catalog pins {', '.join(spec.versions)}: "
                f"add it to the engine's versions in hops.yaml first"
            )
        pins: dict[str, Pin] = {}
        for target in catalog.pinned_targets(name):
            try:
                located = locate(target.spec)
            except TargetNotFound as exc:
                problems.append(TargetStatus(target, "unresolved", str(exc)))
                continue
            pins[target.spec] = Pin(located.sha256, located.relative_file(), located.line, located.line_hashes)
        section = lock_section(name, installed, spec.version)
        lock.pins[section] = pins
        lock.versions[section] = installed
    return lock, problems
