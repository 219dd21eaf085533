"""The hop catalog (tracer/catalog/hops.yaml) as typed data, and its version/hash pins (tracer/catalog/hops.lock.json).

A target is "module:Qualified.name". It is resolved two ways:
- statically (tracer.catalog.source.locate): file, line and source text read from the installed package
  without importing it, which is what `servetrace hops` / `servetrace check` use;
- by import (tracer.instrument.hooks), when hooks are installed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import yaml

CATALOG_PATH = Path(__file__).with_name("hops.yaml")
LOCK_PATH = Path(__file__).with_name("hops.lock.json")
SCOPES = ("request", "step")


class CatalogError(ValueError):
    """The catalog file is malformed or names something that does not exist."""


@dataclass(frozen=True)
class Target:
    hop: str
    engine: str
    spec: str  # "module:Qualified.name"
    note: str = ""
    live: bool = True  # False: replay calls it, a live server does not

    @property
    def module(self) -> str:
        return self.spec.split(":", 1)[0]

    @property
    def qualname(self) -> str:
        return self.spec.split(":", 1)[1]


@dataclass(frozen=True)
class Engine:
    name: str
    package: str
    version: str | None
    pinned: bool
    description: str = ""

    def installed_version(self) -> str | None:
        try:
            return metadata.version(self.package)
        except metadata.PackageNotFoundError:
            return None


@dataclass(frozen=True)
class Hop:
    name: str
    scope: str
    meaning: str
    targets: dict[str, tuple[Target, ...]]
    cuda_timed: bool = False


@dataclass(frozen=True)
class Catalog:
    engines: dict[str, Engine]
    hops: tuple[Hop, ...]

    def hop(self, name: str) -> Hop:
        for hop in self.hops:
            if hop.name == name:
                return hop
        raise KeyError(f"no hop named {name!r}; hops: {', '.join(h.name for h in self.hops)}")

    def targets(self, engine: str | None = None) -> list[Target]:
        if engine is not None and engine not in self.engines:
            raise CatalogError(f"unknown engine {engine!r}; choose from {', '.join(self.engines)}")
        return [
            target
            for hop in self.hops
            for name, targets in hop.targets.items()
            if engine is None or name == engine
            for target in targets
        ]


def _parse_target(hop: str, engine: str, entry: object) -> Target:
    if isinstance(entry, str):
        entry = {"target": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("target"), str):
        raise CatalogError(f"hop {hop}, engine {engine}: a target is a string or a mapping with 'target'")
    spec = entry["target"]
    module, sep, qualname = spec.partition(":")
    if not sep or not module or not qualname:
        raise CatalogError(f"hop {hop}, engine {engine}: target {spec!r} is not 'module:Qualified.name'")
    return Target(hop=hop, engine=engine, spec=spec, note=str(entry.get("note", "")), live=bool(entry.get("live", True)))


def parse_catalog(data: dict) -> Catalog:
    if not isinstance(data, dict) or "engines" not in data or "hops" not in data:
        raise CatalogError("the catalog needs top-level 'engines' and 'hops'")
    engines = {
        name: Engine(
            name=name,
            package=spec["package"],
            version=spec.get("version"),
            pinned=bool(spec.get("pinned", False)),
            description=spec.get("description", ""),
        )
        for name, spec in data["engines"].items()
    }
    hops = []
    seen = set()
    for raw in data["hops"]:
        name = raw["name"]
        if name in seen:
            raise CatalogError(f"hop {name} is listed twice")
        seen.add(name)
        if raw.get("scope") not in SCOPES:
            raise CatalogError(f"hop {name}: scope must be one of {SCOPES}, got {raw.get('scope')!r}")
        targets_raw = raw.get("targets") or {}
        unknown = set(targets_raw) - set(engines)
        if unknown:
            raise CatalogError(f"hop {name}: unknown engine(s) {sorted(unknown)}")
        targets = {
            engine: tuple(_parse_target(name, engine, entry) for entry in (targets_raw.get(engine) or []))
            for engine in engines
        }
        hops.append(Hop(name, raw["scope"], raw.get("meaning", ""), targets, bool(raw.get("cuda_timed", False))))
    return Catalog(engines, tuple(hops))


@lru_cache(maxsize=None)
def _load_default() -> Catalog:
    return load_catalog(CATALOG_PATH)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The catalog at `path` (default: the packaged tracer/catalog/hops.yaml)."""
    if path is None:
        return _load_default()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    return parse_catalog(data)


# -- pins ------------------------------------------------------------------------------------


@dataclass
class Pin:
    sha256: str
    file: str  # relative to the package's parent directory, e.g. vllm/v1/core/sched/scheduler.py
    line: int
    lines: str = ""  # a short hash per source line (tracer.catalog.source.line_hashes): says which lines drifted


@dataclass
class Lock:
    """Pinned versions and source hashes: {engine: {"version": v, "targets": {spec: Pin}}}."""

    versions: dict[str, str] = field(default_factory=dict)
    pins: dict[str, dict[str, Pin]] = field(default_factory=dict)

    def pin(self, engine: str, spec: str) -> Pin | None:
        return self.pins.get(engine, {}).get(spec)

    def to_json(self) -> str:
        out = {
            engine: {
                "version": self.versions.get(engine),
                "targets": {spec: vars(pin) for spec, pin in sorted(pins.items())},
            }
            for engine, pins in sorted(self.pins.items())
        }
        return json.dumps(out, indent=1, sort_keys=True) + "\n"


def load_lock(path: str | Path | None = None) -> Lock:
    path = Path(path) if path is not None else LOCK_PATH
    if not path.exists():
        return Lock()
    try:
        raw = json.loads(path.read_text())
        return Lock(
            versions={engine: entry.get("version") for engine, entry in raw.items()},
            pins={
                engine: {spec: Pin(**pin) for spec, pin in entry.get("targets", {}).items()}
                for engine, entry in raw.items()
            },
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise CatalogError(f"{path}: not a valid pin file ({exc}); regenerate it with `servetrace check --update`") from None


def save_lock(lock: Lock, path: str | Path | None = None) -> None:
    Path(path if path is not None else LOCK_PATH).write_text(lock.to_json())
