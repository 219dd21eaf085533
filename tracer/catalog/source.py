"""Find a catalog target in an installed package's source without importing the package.

Importing sglang.srt.managers.scheduler pulls in ~900 modules; reading the file and walking its
AST takes milliseconds and gives the same text `inspect.getsource` returns for the function
(decorators included), so pins are stable whether or not the module can be imported here.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

LINE_HASH_CHARS = 6


class TargetNotFound(LookupError):
    """The module file or the qualified name inside it does not exist."""


@dataclass(frozen=True)
class Located:
    spec: str
    file: Path
    line: int  # first line (the first decorator, if any)
    end_line: int
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def line_hashes(self) -> str:
        return line_hashes(self.source)

    def relative_file(self) -> str:
        """The path from the directory holding the top-level package, e.g. vllm/v1/core/..."""
        top = self.spec.split(":", 1)[0].split(".")[0]
        parts = self.file.parts
        if top in parts:
            index = len(parts) - 1 - parts[::-1].index(top)
            return "/".join(parts[index:])
        return str(self.file)


def _line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()[:LINE_HASH_CHARS]


def line_hashes(source: str) -> str:
    """A short hash per line, concatenated: enough to tell which lines changed since a pin."""
    return "".join(_line_hash(line) for line in source.splitlines())


def changed_line_ranges(old_hashes: str, new_source: str) -> tuple[int, int, list[tuple[int, int]]]:
    """(lines added, lines removed, [(first, last) 0-based ranges of changed lines in the new source])."""
    step = LINE_HASH_CHARS
    old = [old_hashes[i : i + step] for i in range(0, len(old_hashes), step)]
    new = [_line_hash(line) for line in new_source.splitlines()]
    added = removed = 0
    ranges = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        removed += i2 - i1
        added += j2 - j1
        if j2 > j1:
            ranges.append((j1, j2 - 1))
    return added, removed, ranges


def module_file(module: str) -> Path:
    """The .py file of `module`, found on disk: only the top-level package's spec is looked up."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None and not spec.submodule_search_locations:
        raise TargetNotFound(f"package {top!r} is not installed")
    if not rest:
        if spec.origin and spec.origin.endswith(".py"):
            return Path(spec.origin)
        raise TargetNotFound(f"{module!r} has no Python source")
    for location in spec.submodule_search_locations or []:
        base = Path(location).joinpath(*rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    raise TargetNotFound(f"module {module!r} does not exist (no {'/'.join(rest)}.py under {top})")


@lru_cache(maxsize=64)
def _parse(path: Path, mtime_ns: int) -> tuple[ast.Module, tuple[str, ...]]:
    text = path.read_text()
    return ast.parse(text, filename=str(path)), tuple(text.splitlines(keepends=True))


def _defines(stmt: ast.stmt, name: str, assignments: bool) -> bool:
    if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return stmt.name == name
    if not assignments:
        return False
    if isinstance(stmt, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)
    return isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name


def locate(spec: str) -> Located:
    """Find `module:Qualified.name` in the installed source: a class or function, or as the last
    name a module or class attribute (`SchedulerConfig.DEFAULT_MAX_NUM_SEQS`), which citations name."""
    return locate_at(module_file(spec.partition(":")[0]), spec)


def locate_at(path: Path, spec: str) -> Located:
    """`module:Qualified.name` in the module file at `path` (the rules of `locate`): what the explorer
    uses to read another installed version of a module."""
    module, _, qualname = spec.partition(":")
    tree, lines = _parse(path, path.stat().st_mtime_ns)
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    walked = []
    names = qualname.split(".")
    for depth, name in enumerate(names):
        matches = [stmt for stmt in body if _defines(stmt, name, assignments=False)]
        if not matches and depth == len(names) - 1:
            # Definitions win (pins of catalog targets never change); only a name no def or class
            # binds is looked up among assignments.
            matches = [stmt for stmt in body if _defines(stmt, name, assignments=True)]
        if not matches:
            where = f"{module}:{'.'.join(walked)}" if walked else module
            raise TargetNotFound(f"{name!r} is not defined in {where} ({path})")
        node = matches[-1]  # the last definition is the binding that wins at runtime
        walked.append(name)
        body = node.body if isinstance(node, ast.ClassDef) else []
    assert node is not None
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    source = "".join(lines[first - 1 : node.end_lineno])
    return Located(spec=spec, file=path, line=first, end_line=node.end_lineno, source=source)
