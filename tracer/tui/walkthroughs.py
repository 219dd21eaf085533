"""Walkthrough notes for a hop: the `::: note hop=NAME [engine=E]` blocks that the site builder
also renders (walkthroughs/README.md documents them), read through tracer.walkthroughs.notes."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tracer.walkthroughs.notes import WALKTHROUGHS_DIR, hop_notes

MAX_NOTE_CHARS = 600


@dataclass(frozen=True)
class Note:
    hop: str
    walkthrough: str  # file name
    title: str  # the walkthrough's title
    text: str
    engine: str | None = None  # None: about the hop in every engine


@lru_cache(maxsize=4)
def _all_notes(directory: Path, stamp: tuple) -> dict[str, tuple[Note, ...]]:
    notes: dict[str, tuple[Note, ...]] = {}
    for hop, found in hop_notes(directory).items():
        notes[hop] = tuple(
            Note(hop, n.walkthrough, n.walkthrough_title, _clip(" ".join(n.text.split())), n.engine) for n in found
        )
    return notes


def _clip(text: str) -> str:
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"


def notes_for(hop: str, directory: Path | None = None) -> tuple[Note, ...]:
    directory = directory or WALKTHROUGHS_DIR
    if not directory.is_dir():
        return ()
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(directory.glob("*.md")))
    return _all_notes(directory, stamp).get(hop, ())
