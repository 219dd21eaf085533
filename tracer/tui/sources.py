"""The code behind a hop: each engine's catalog targets, read from the installed source.

Nothing is imported: tracer.catalog.source.locate walks the file's AST, so the file:line shown is the
one of the installed version (vLLM 0.33.0, SGLang 0.5.23, our engine/), whatever can import here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec

from tracer.catalog.hops import CatalogError, Engine, load_catalog
from tracer.catalog.source import TargetNotFound, locate
from tracer.tui.other_versions import SOURCE_PATH_ENV, environment_with, label, locate_in


@dataclass(frozen=True)
class SourceView:
    engine: str
    version: str  # installed version ('' when not installed)
    spec: str  # module:Qualified.name
    note: str
    live: bool
    file: str = ""  # relative to the package's parent, e.g. vllm/v1/core/sched/scheduler.py
    line: int = 0
    end_line: int = 0
    source: str = ""
    error: str = ""
    installed: str = ""  # the version installed here, when `version` is another environment's
    pinned_versions: tuple[str, ...] = ()  # what the catalog pins (empty for our engine)
    origin: str = ""  # the environment read, when not this one (the trace's version lives there)
    recorded: str = ""  # the version the trace recorded, when the code shown is another one
    operation: str = ""  # the request operation the target serves (catalog), '' when it serves all
    mode: str = ""  # the engine mode the target runs in (catalog), '' in every mode

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else self.spec

    @property
    def title(self) -> str:
        version = f" {self.version}" if self.version else ""
        return f"{self.engine}{version} · {self.where} · {self.spec.split(':', 1)[-1]}"

    @property
    def version_note(self) -> str:
        """Why the code shown may not be the code that ran or the pinned code: '' when it is."""
        if self.origin:
            return f"from {self.origin}; {self.installed or 'none'} installed"  # short: a pane is 38 columns at 80
        if self.recorded:
            return (f"the trace was recorded with {self.engine} {self.recorded}, whose source is not here; "
                    f"showing the installed {self.version or 'version'} (set {SOURCE_PATH_ENV} to a site-packages with it)")
        if self.pinned_versions and self.version and self.version not in self.pinned_versions:
            return f"installed {self.version}; the catalog pins {', '.join(self.pinned_versions)}"
        return ""


def our_engines() -> list[str]:
    """The engines the catalog does not pin: ours (engine/), shown beside an upstream one."""
    return [name for name, engine in load_catalog().engines.items() if not engine.pinned]


def upstream_engines() -> list[str]:
    """The pinned engines (vLLM, SGLang, ...), in catalog order: the source pane cycles through them."""
    return [name for name, engine in load_catalog().engines.items() if engine.pinned]


def _absent(engine: Engine) -> str:
    """Why the engine's source cannot be read here, '' when its package is importable."""
    if find_spec(engine.package) is not None:  # a top-level package: found without importing it
        return ""
    pins = f" (the catalog pins {', '.join(engine.versions)})" if engine.versions else ""
    return f"{engine.name} is not installed here{pins}: install it to read this hop's code"


@lru_cache(maxsize=256)
def hop_sources(hop: str, recorded: tuple[str, str] | None = None) -> dict[str, tuple[SourceView, ...]]:
    """Every engine's targets for `hop` ({} for a span name the catalog does not know).
    `recorded`: (engine, version) a trace recorded; that engine's code is read at that version
    where an environment here has it, else the installed code is shown and labeled as such."""
    try:
        catalog = load_catalog()
        entry = catalog.hop(hop)
    except (KeyError, CatalogError, OSError):
        return {}
    out: dict[str, tuple[SourceView, ...]] = {}
    for engine, targets in entry.targets.items():
        spec = catalog.engines[engine]
        version = spec.installed_version() or ""
        absent = _absent(spec)
        want = recorded[1] if recorded and recorded[0] == engine and recorded[1] and recorded[1] != version else ""
        site = environment_with(spec, want) if want else None
        views = []
        for target in targets:
            base = dict(engine=engine, spec=target.spec, note=target.note, live=target.live,
                        pinned_versions=spec.versions if spec.pinned else (), operation=target.operation,
                        mode=target.mode)
            if site is not None:  # the recorded version, from the environment that has it
                try:
                    located = locate_in(site, target.spec)
                except (TargetNotFound, OSError, SyntaxError) as exc:
                    views.append(SourceView(**base, version=want, origin=label(site), installed=version, error=str(exc)))
                    continue
                views.append(SourceView(**base, version=want, origin=label(site), installed=version,
                                        file=located.relative_file(), line=located.line, end_line=located.end_line,
                                        source=located.source))
                continue
            base.update(version=version, recorded=want)
            if absent:
                views.append(SourceView(**base, error=absent))
                continue
            try:
                located = locate(target.spec)
            except (TargetNotFound, OSError, SyntaxError) as exc:
                views.append(SourceView(**base, error=str(exc)))
                continue
            views.append(SourceView(**base, file=located.relative_file(), line=located.line,
                                    end_line=located.end_line, source=located.source))
        out[engine] = tuple(views)
    return out


def hop_meaning(hop: str) -> str:
    try:
        return load_catalog().hop(hop).meaning
    except (KeyError, CatalogError, OSError):
        return ""


def hop_names() -> frozenset[str]:
    try:
        return frozenset(h.name for h in load_catalog().hops)
    except (CatalogError, OSError):
        return frozenset()
