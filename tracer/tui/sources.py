"""The code behind a hop: each engine's catalog targets, read from the installed source.

Nothing is imported: tracer.catalog.source.locate walks the file's AST, so the file:line shown is the
one of the installed version (vLLM 0.33.0, SGLang 0.5.23, our engine/), whatever can import here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tracer.catalog.hops import CatalogError, load_catalog
from tracer.catalog.source import TargetNotFound, locate


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

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else self.spec

    @property
    def title(self) -> str:
        version = f" {self.version}" if self.version else ""
        return f"{self.engine}{version} · {self.where} · {self.spec.split(':', 1)[-1]}"


def engines() -> list[str]:
    try:
        return list(load_catalog().engines)
    except (CatalogError, OSError):
        return ["mini", "vllm", "sglang"]


@lru_cache(maxsize=256)
def hop_sources(hop: str) -> dict[str, tuple[SourceView, ...]]:
    """Every engine's targets for `hop` ({} for a span name the catalog does not know)."""
    try:
        catalog = load_catalog()
        entry = catalog.hop(hop)
    except (KeyError, CatalogError, OSError):
        return {}
    out: dict[str, tuple[SourceView, ...]] = {}
    for engine, targets in entry.targets.items():
        version = catalog.engines[engine].installed_version() or ""
        views = []
        for target in targets:
            base = dict(engine=engine, version=version, spec=target.spec, note=target.note, live=target.live)
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
