"""Walkthrough notes for a hop, read from walkthroughs/*.md (none yet is fine).

Two ways a walkthrough names the hops it annotates, both read:
- YAML front matter with `hops:`, either a list of hop names (the note is the walkthrough's
  first paragraph) or a mapping of hop name to its note;
- a heading whose text holds the hop name, bare or in backticks ("## `kv.match_prefix`",
  "### The prefix lookup (kv.match_prefix)"): the note is the first paragraph under it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

WALKTHROUGHS_DIR = Path(__file__).resolve().parents[2] / "walkthroughs"
MAX_NOTE_CHARS = 600
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Note:
    hop: str
    walkthrough: str  # file name
    title: str  # the walkthrough's title (front matter `title` or first heading)
    text: str


def _paragraph(lines: list[str]) -> str:
    block: list[str] = []
    in_code = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code  # code is pulled from the source, never quoted as a note
            if block:
                break
            continue
        if in_code:
            continue
        if _HEADING.match(line):
            if block:
                break
            continue
        if not stripped:
            if block:
                break
            continue
        block.append(stripped)
    text = " ".join(block)
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"


def parse_walkthrough(name: str, text: str, hop_names: frozenset[str]) -> list[Note]:
    meta: dict = {}
    body = text
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            try:
                loaded = yaml.safe_load(text[4:end])
                meta = loaded if isinstance(loaded, dict) else {}
            except yaml.YAMLError:
                meta = {}
            body = text[end + 4:].lstrip("\n")
    lines = body.splitlines()
    title = str(meta.get("title") or next((m.group(2) for m in map(_HEADING.match, lines) if m), name))
    notes: dict[str, str] = {}
    hops = meta.get("hops")
    if isinstance(hops, dict):
        notes.update({str(h): " ".join(str(n).split()) for h, n in hops.items() if n})
    elif isinstance(hops, list):
        first = _paragraph(lines)
        notes.update({str(h): first for h in hops if first})
    for index, line in enumerate(lines):
        match = _HEADING.match(line)
        if not match:
            continue
        heading = match.group(2)
        for hop in hop_names:
            if hop not in notes and re.search(rf"(?<![\w.]){re.escape(hop)}(?![\w.])", heading):
                paragraph = _paragraph(lines[index + 1:])
                if paragraph:
                    notes[hop] = paragraph
    return [Note(hop, name, title, note) for hop, note in notes.items() if hop in hop_names]


@lru_cache(maxsize=4)
def _all_notes(directory: Path, stamp: tuple) -> dict[str, tuple[Note, ...]]:
    from tracer.tui.sources import hop_names

    names = hop_names()
    by_hop: dict[str, list[Note]] = {}
    for path in sorted(directory.glob("*.md")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for note in parse_walkthrough(path.name, text, names):
            by_hop.setdefault(note.hop, []).append(note)
    return {hop: tuple(notes) for hop, notes in by_hop.items()}


def notes_for(hop: str, directory: Path | None = None) -> tuple[Note, ...]:
    directory = directory or WALKTHROUGHS_DIR
    if not directory.is_dir():
        return ()
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(directory.glob("*.md")))
    return _all_notes(directory, stamp).get(hop, ())
