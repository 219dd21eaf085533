"""Parse a walkthrough: YAML front matter, Markdown, and `::: kind args` directives.

A directive is one line at the start of a line, outside fenced code:

    ::: code hop=kv.match_prefix engines=mini,vllm,sglang
    ::: code target=vllm:vllm.v1.core.block_pool:BlockPool.touch lines=1-12
    ::: note hop=kv.allocate
        Markdown body, indented four spaces (blank lines inside are fine).
    ::: trace recipe=mini-shared-prefix
    ::: lab prefix-cache-hit

Arguments are shell-style words: `key=value` (quote values with spaces) and, for trace and
lab, one positional name. Only `note` takes a body. walkthroughs/README.md is the user's guide.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tracer.walkthroughs.errors import Problem

KINDS = ("code", "note", "trace", "lab")
DIRECTIVE = re.compile(r"^::: ?(\S+)(.*)$")
FENCE = re.compile(r"^(```|~~~)")
MOVES = ("TTFT", "TPOT", "throughput", "memory")


@dataclass
class Directive:
    kind: str
    args: dict[str, str]
    positional: list[str]
    body: str
    line: int
    text: str  # the directive line as written (for error messages)

    def arg(self, name: str, default: str | None = None) -> str | None:
        return self.args.get(name, default)


@dataclass
class Walkthrough:
    path: Path
    meta: dict
    blocks: list[str | Directive]  # Markdown text and directives, in order
    problems: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def slug(self) -> str:
        return self.path.stem

    @property
    def title(self) -> str:
        if self.meta.get("title"):
            return str(self.meta["title"])
        for block in self.blocks:
            if isinstance(block, str):
                for line in block.splitlines():
                    if line.startswith("# "):
                        return line[2:].strip()
        return self.slug

    def directives(self, kind: str | None = None) -> list[Directive]:
        return [b for b in self.blocks if isinstance(b, Directive) and (kind is None or b.kind == kind)]


def _split_front_matter(text: str) -> tuple[str, str, int]:
    """(yaml text, body, number of lines the front matter took)."""
    if not text.startswith("---\n"):
        return "", text, 0
    end = text.find("\n---\n", 4)
    if end < 0:
        return "", text, 0
    front = text[4:end]
    return front, text[end + 5 :], front.count("\n") + 3


def _parse_args(rest: str) -> tuple[dict[str, str], list[str]]:
    args: dict[str, str] = {}
    positional: list[str] = []
    for word in shlex.split(rest):
        key, sep, value = word.partition("=")
        if sep and key:
            args[key] = value
        else:
            positional.append(word)
    return args, positional


def parse_walkthrough(path: Path, text: str | None = None) -> Walkthrough:
    text = path.read_text() if text is None else text
    front, body, offset = _split_front_matter(text)
    problems: list[Problem] = []
    meta: dict = {}
    if front:
        try:
            meta = yaml.safe_load(front) or {}
        except yaml.YAMLError as exc:
            problems.append(Problem(path.name, 1, "---", f"front matter is not valid YAML: {exc}"))
        if not isinstance(meta, dict):
            problems.append(Problem(path.name, 1, "---", "front matter must be a YAML mapping"))
            meta = {}
    moves = meta.get("moves")
    if moves is not None:
        moves = [moves] if isinstance(moves, str) else moves
        bad = [m for m in moves if m not in MOVES]
        if bad:
            problems.append(Problem(path.name, 1, "moves", f"unknown metric(s) {bad}; use {', '.join(MOVES)}"))
        meta["moves"] = list(moves)

    lines = body.splitlines()
    blocks: list[str | Directive] = []
    markdown: list[str] = []
    in_fence = None
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = FENCE.match(line)
        if fence:
            in_fence = None if in_fence == fence.group(1) else (in_fence or fence.group(1))
        match = DIRECTIVE.match(line) if in_fence is None else None
        if not match:
            markdown.append(line)
            index += 1
            continue
        number = offset + index + 1
        kind = match.group(1)
        body_lines = []
        index += 1
        while index < len(lines) and (lines[index].startswith(("    ", "\t")) or not lines[index].strip()):
            body_lines.append(lines[index])
            index += 1
        while body_lines and not body_lines[-1].strip():  # trailing blank lines belong to the Markdown
            body_lines.pop()
            markdown.append("")
        if kind not in KINDS:
            problems.append(Problem(path.name, number, line, f"unknown directive {kind!r}; use one of {', '.join(KINDS)}"))
            continue
        try:
            args, positional = _parse_args(match.group(2))
        except ValueError as exc:
            problems.append(Problem(path.name, number, line, f"cannot parse arguments: {exc}"))
            continue
        body_text = "\n".join(_dedent(l) for l in body_lines)
        if body_text.strip() and kind != "note":
            problems.append(Problem(path.name, number, line, f"'{kind}' takes no indented body (only 'note' does); never paste code"))
            continue
        if markdown:
            blocks.append("\n".join(markdown))
            markdown = []
        blocks.append(Directive(kind, args, positional, body_text, number, line))
    if markdown:
        blocks.append("\n".join(markdown))
    return Walkthrough(path, meta, blocks, problems)


def _dedent(line: str) -> str:
    if line.startswith("\t"):
        return line[1:]
    return line[4:] if line.startswith("    ") else line.lstrip()


def load_walkthroughs(directory: Path) -> list[Walkthrough]:
    """Every walkthrough in `directory` (README.md is the format guide, not a walkthrough)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no walkthroughs directory at {directory}")
    return [parse_walkthrough(p) for p in sorted(directory.glob("*.md")) if p.name.lower() != "readme.md"]
