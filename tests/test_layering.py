"""The architecture as rules on the source (DESIGN.md, "Layout"), checked by reading it (AST),
imports inside functions counted too:
- no import cycles among engine/ and tracer/ modules;
- engine/ imports nothing of tracer/;
- the explorer (tracer.tui) and the site builder (tracer.sitebuilder) never import each other,
  nor the engine, replay, labs or instrumentation: they read traces and the catalog (the site
  builder gets lab results from `servetrace site build`, tracer.commands.site);
- a hop name is written only in the catalog (tracer/catalog/) and in the extractors' BEFORE /
  AFTER tables (which join a hop to the function reading it); everything else reads hop names
  from the catalog's roles;
- a span attribute key ("servetrace.*", "gen_ai.*") is written only in tracer/traces/schema.py.
Each rule is shown failing on a planted violation in a temporary tree.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "tracer")
# (importer, what it must not import): module-name prefixes.
FORBIDDEN = [
    ("engine", "tracer"),
    *[("tracer.tui", other) for other in ("tracer.sitebuilder", "engine", "tracer.replay", "tracer.labs", "tracer.instrument")],
    *[("tracer.sitebuilder", other) for other in ("tracer.tui", "engine", "tracer.replay", "tracer.labs", "tracer.instrument")],
]
EXTRACTORS = "tracer/instrument/extractors/"  # their module-level tables (BEFORE, AFTER, INJECT) map hop -> function
HOP_NAMES_ALLOWED_IN = ("tracer/catalog/",)
ATTRIBUTE_KEY = re.compile(r"^(servetrace|gen_ai)\.[a-z_]")
KEYS_ALLOWED_IN = ("tracer/traces/schema.py",)


def _modules(root: Path) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the project modules it imports}, from every import statement in the file."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `from pkg import name`: name may be no module
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    def within(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    return sorted(f"{importer} imports {target}" for importer, targets in graph.items() for target in targets
                  for source, banned in FORBIDDEN if within(importer, source) and within(target, banned))


def _strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are not docstrings or other bare string statements."""
    bare = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare]


def _hop_table_keys(tree: ast.Module) -> set[int]:
    """The keys of the module-level tables (NAME = {...}): the extractors' hop -> function maps."""
    keys: set[int] = set()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)):
            keys.update(id(key) for key in node.value.keys if key is not None)
    return keys


def literal_violations(root: Path, hop_names: set[str]) -> list[str]:
    out = []
    for path in sorted((root / "tracer").rglob("*.py")):
        where = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), str(path))
        table_keys = _hop_table_keys(tree) if where.startswith(EXTRACTORS) else set()
        for node in _strings(tree):
            if node.value in hop_names and id(node) not in table_keys and not where.startswith(HOP_NAMES_ALLOWED_IN):
                out.append(f"{where}:{node.lineno}: hop name {node.value!r} (read it from the catalog)")
            if ATTRIBUTE_KEY.match(node.value) and not where.startswith(KEYS_ALLOWED_IN):
                out.append(f"{where}:{node.lineno}: attribute key {node.value!r} (import it from tracer.traces.schema)")
    return out


def catalog_hop_names(root: Path) -> set[str]:
    return {hop["name"] for hop in yaml.safe_load((root / "tracer/catalog/hops.yaml").read_text())["hops"]}


# -- the project -------------------------------------------------------------------------------


def test_there_are_no_import_cycles():
    assert cycles(import_graph(REPO)) == []


def test_engine_imports_nothing_of_tracer_and_the_explorer_and_site_read_only_traces_and_the_catalog():
    assert forbidden_imports(import_graph(REPO)) == []


def test_hop_names_live_in_the_catalog_and_attribute_keys_in_the_schema():
    assert literal_violations(REPO, catalog_hop_names(REPO)) == []


# -- the rules catch what they are for (a planted tree) ------------------------------------------


def _plant(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        for directory in [root / package, *(p for p in (root / package).rglob("*") if p.is_dir())]:
            (directory / "__init__.py").touch()
    return root


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    root = _plant(tmp_path, {
        "tracer/tui/model.py": "from tracer.tui.summaries import summarise\n",
        "tracer/tui/summaries.py": "def summarise():\n    from tracer.tui import model\n",
        "tracer/tui/table.py": "from .model import summarise\n",  # relative, no cycle
    })
    assert cycles(import_graph(root)) == [["tracer.tui.model", "tracer.tui.summaries"]]


def test_each_forbidden_import_is_reported(tmp_path):
    root = _plant(tmp_path, {
        "engine/scheduler.py": "def f():\n    import tracer.traces.schema\n",
        "tracer/traces/schema.py": "",
        "tracer/tui/screens.py": "from tracer.sitebuilder import render\n",
        "tracer/sitebuilder/render.py": "from tracer.labs.index import run_lab\n",
        "tracer/sitebuilder/builder.py": "from ..replay import session\nfrom tracer.catalog import hops\n",
        "tracer/labs/index.py": "", "tracer/replay/session.py": "", "tracer/catalog/hops.py": "",
        "tracer/commands/site.py": "from tracer.labs import index\nfrom tracer.sitebuilder import builder\n",  # the top floor may
    })
    assert forbidden_imports(import_graph(root)) == [
        "engine.scheduler imports tracer.traces.schema",
        "tracer.sitebuilder.builder imports tracer.replay", "tracer.sitebuilder.builder imports tracer.replay.session",
        "tracer.sitebuilder.render imports tracer.labs.index",
        "tracer.tui.screens imports tracer.sitebuilder", "tracer.tui.screens imports tracer.sitebuilder.render",
    ]


def test_hop_names_and_attribute_keys_outside_their_homes_are_reported(tmp_path):
    root = _plant(tmp_path, {
        "tracer/catalog/hops.py": "ROOT = 'http.request'\n",
        "tracer/traces/schema.py": "CACHED = 'servetrace.kv.cached_tokens'\n",
        "tracer/instrument/extractors/mini.py": (
            "BEFORE = {'kv.allocate': None}\n"
            "def f(span):\n    return span.name == 'kv.allocate'\n"),
        "tracer/tui/timeline.py": (
            '"""Docstrings may name kv.allocate and servetrace.kv.usage."""\n'
            "def g(attrs):\n    return attrs.get('servetrace.kv.usage'), attrs.get('gen_ai.request.id')\n"),
        "tracer/tui/widgets.py": "SHORT = 'servetrace.'  # a namespace prefix, not a key\n",
    })
    assert literal_violations(root, {"http.request", "kv.allocate"}) == [
        "tracer/instrument/extractors/mini.py:3: hop name 'kv.allocate' (read it from the catalog)",
        "tracer/tui/timeline.py:3: attribute key 'servetrace.kv.usage' (import it from tracer.traces.schema)",
        "tracer/tui/timeline.py:3: attribute key 'gen_ai.request.id' (import it from tracer.traces.schema)",
    ]
