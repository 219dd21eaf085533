"""Per-hop notes: the `::: note hop=NAME [engine=ENGINE]` blocks of the walkthroughs, as data.

The terminal explorer and the site's hop catalog page both read them from here:

    from tracer.walkthroughs.notes import hop_notes
    hop_notes()["kv.allocate"]  # -> [HopNote(hop, engine, walkthrough, line, title, text), ...]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tracer.walkthroughs.directives import Walkthrough, load_walkthroughs

WALKTHROUGHS_DIR = Path(__file__).resolve().parents[2] / "walkthroughs"


@dataclass(frozen=True)
class HopNote:
    hop: str
    engine: str | None  # None: the note is about the hop in every engine
    walkthrough: str  # file name, e.g. 04-prefix-caching.md
    line: int
    walkthrough_title: str
    text: str  # Markdown

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines() or [""]


def notes_of(walkthroughs: list[Walkthrough]) -> dict[str, list[HopNote]]:
    notes: dict[str, list[HopNote]] = {}
    for walkthrough in walkthroughs:
        for directive in walkthrough.directives("note"):
            hop = directive.arg("hop")
            if hop:
                notes.setdefault(hop, []).append(HopNote(
                    hop, directive.arg("engine"), walkthrough.name, directive.line, walkthrough.title, directive.body.strip()))
    return notes


def hop_notes(directory: str | Path | None = None) -> dict[str, list[HopNote]]:
    """{hop: notes} from every walkthrough in `directory` (default: the repository's walkthroughs/)."""
    return notes_of(load_walkthroughs(Path(directory) if directory else WALKTHROUGHS_DIR))
