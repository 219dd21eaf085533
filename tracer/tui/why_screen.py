"""The "why" view: where the selected request's time went, step by step, and why its prefix-cache
lookup missed, as `servetrace explain` says it (tracer.tui.why computes it from the model).

Top to bottom: the wall time split by cause (label, ms, share, and the residual no cause covers),
the prefix-cache line (its blocks, hit or miss, the first miss's reason code with its meaning and
evidence, and what the miss cost), then every step the request ran or waited in, scrollable, the
highlighted step's note in full under it. The timeline is read in a worker thread: a trace of
100,000 spans takes seconds, and the keyboard stays live meanwhile.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import ScrollableContainer
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from tracer.traces.explain_cache import CacheMiss
from tracer.traces.explain_time import StepNote, TimeSplit
from tracer.tui.keys import WHY_KEYS
from tracer.tui.model import Request, TraceModel
from tracer.tui.rowtable import Column, RowTable
from tracer.tui.why import Why

HASH_CHARS = 8  # of a block hash: enough to tell blocks apart, and to find one in --json output
MAX_BLOCK_CELLS = 48  # one cell a block; longer prompts show their first blocks and a count
WHAT_WIDTH = 30  # the step table's "what" column at most ("not scheduled: max-num-seqs" fits)
HIT, MISS = "green", "red"
WIDE = 120  # columns from which the split table and the cache lines sit side by side
NOTE_LINES = 3  # the highlighted step's note at most (#why-note's max-height)


def _share(ms: float, wall_ms: float) -> str:
    return f"{ms / wall_ms:.1%}" if wall_ms else "-"


def split_table(split: TimeSplit, ran_model: bool = True) -> Table:
    """The wall time by cause, in explain's precedence order, and the residual (what no cause covers).
    `ran_model`: False for a replay, whose outputs are forced: its ms are the scheduler's own."""
    caption = None if ran_model else "replay: no model ran; scheduler ms"
    # No rule under the header: at 24 rows every line counts.
    table = Table(box=None, show_edge=False, pad_edge=False, expand=False, caption=caption, caption_style="dim",
                  caption_justify="left", header_style="bold underline")
    table.add_column("where the time went")
    table.add_column("ms", justify="right")
    table.add_column("share", justify="right")
    for label, ms in split.parts.items():
        table.add_row(label, f"{ms:.2f}", _share(ms, split.wall_ms))
    table.add_row(Text("residual (no cause)", style="dim"), f"{split.residual_ms:.2f}",
                  _share(split.residual_ms, split.wall_ms))
    return table


def block_cells(cache: CacheMiss) -> Text:
    """One cell a full block, green where the lookup hit it, red where it missed; then the runs."""
    blocks = cache.blocks
    text = Text()
    for block in blocks[:MAX_BLOCK_CELLS]:
        text.append("█" if block["hit"] else "░", style=HIT if block["hit"] else MISS)
    if len(blocks) > MAX_BLOCK_CELLS:
        text.append(f" +{len(blocks) - MAX_BLOCK_CELLS}", style="dim")
    hits = sum(1 for block in blocks if block["hit"])
    runs = []
    if hits:
        runs.append(Text(f"#0-#{hits - 1} hit" if hits > 1 else "#0 hit", style=HIT))
    if hits < len(blocks):
        runs.append(Text(f"#{hits}-#{len(blocks) - 1} miss" if len(blocks) - hits > 1 else f"#{hits} miss", style=MISS))
    if blocks:
        text.append("  ")
    return text + Text(" · ").join(runs)


def cache_grid(why: Why) -> Table:
    cache = why.cache
    assert cache is not None
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    blocks = cache.blocks
    hits = sum(1 for block in blocks if block["hit"])
    size = f" · {cache.granularity()}" if cache.granularity() else ""
    grid.add_row("prefix cache", f"{cache.cached_tokens} of {cache.prompt_tokens} prompt tokens cached · "
                 f"{cache.units_hit()}{size}")
    if blocks:
        grid.add_row("blocks" if cache.unit == "block" else "units", block_cells(cache))
        named = []
        if hits:
            named.append(Text(f"last hit #{hits - 1} {blocks[hits - 1]['hash'][:HASH_CHARS]}", style=HIT))
        if hits < len(blocks):
            named.append(Text(f"first miss #{hits} {blocks[hits]['hash'][:HASH_CHARS]}", style=MISS))
        grid.add_row("hashes", Text(" · ").join(named))
    reason = Text(cache.reason, style="bold green" if cache.reason == "full-hit" else "bold yellow")
    if why.reason_meaning:
        reason.append(f": {why.reason_meaning}")
    grid.add_row("reason", reason)
    grid.add_row("evidence", cache.evidence)
    if cache.reason != "full-hit" and cache.uncached_tokens:
        cost = f"{cache.uncached_tokens} tokens computed"
        if cache.est_prefill_ms is not None:
            cost += f", about {cache.est_prefill_ms:.1f} ms of prefill (at this request's own rate)"
        grid.add_row("cost", cost)
    return grid


def note_text(note: StepNote) -> str:
    return f"step {note.step} {note.what}: {note.detail}"


class StepNotes(RowTable):
    """Every step the request ran in, waited through or sat out, with explain's note for it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(zebra_stripes=True, **kwargs)
        self.notes: list[StepNote] = []

    def show(self, notes: list[StepNote]) -> None:
        self.notes = notes
        self.set_rows(len(notes))

    def columns(self, width: int) -> list[Column]:
        what = min(WHAT_WIDTH, max([len("what"), *(len(n.what) for n in self.notes)]))
        step = max([len("step"), *(len(str(n.step)) for n in self.notes)])
        at = max([len("+ms"), *(len(f"+{n.start_ms:.1f}") for n in self.notes)])
        fixed = step + at + what + 8  # four cells, each padded both sides
        return [Column("step", step, "right"), Column("+ms", at, "right"), Column("what", what),
                Column("note", max(8, width - fixed))]

    def row_cells(self, index: int) -> Sequence[Text]:
        note = self.notes[index]
        style = "cyan" if note.what in ("prefill", "decode", "recompute") else "yellow"
        return Text(str(note.step)), Text(f"+{note.start_ms:.1f}"), Text(note.what, style=style), Text(note.detail)


class WhyScreen(Screen):
    """One request explained; n / p explain the requests around it in the main view's list."""

    BINDINGS = WHY_KEYS
    # The split and the cache side by side where both fit (WIDE columns), else one over the other;
    # either way scrolled (tab reaches it) past the height fit() leaves it, so the steps keep the rest.
    DEFAULT_CSS = """
    WhyScreen #why-title { height: 1; padding: 0 1; background: $panel; text-style: bold; }
    WhyScreen #why-top { height: auto; max-height: 50%; layout: vertical; overflow-x: hidden; }  /* then fit() */
    WhyScreen #why-top.-wide { layout: horizontal; }
    WhyScreen #why-split, WhyScreen #why-cache, WhyScreen #why-message { height: auto; padding: 0 1; }
    WhyScreen #why-split { width: auto; }
    WhyScreen #why-cache { border-top: solid $primary-background; }
    WhyScreen #why-top.-wide #why-cache { width: 1fr; border-top: none; border-left: solid $primary-background; }
    WhyScreen #why-steps { height: 1fr; min-height: 4; border-top: solid $primary-background; }
    WhyScreen #why-note { height: auto; padding: 0 1; border-top: solid $primary-background; }
    """

    def __init__(self, model: TraceModel, requests: Sequence[Request], index: int,
                 on_move: Callable[[Request], None] | None = None) -> None:
        """`requests`: the main view's list, `index` the selected one's place in it; `on_move(request)`
        runs when n / p move to another (the main view's cursor follows)."""
        super().__init__()
        self.model, self.requests, self.index = model, list(requests), index
        self.explainer = model.why  # made here, on the UI thread: see tracer.tui.why.WhyIndex
        self.on_move = on_move
        self.why: Why | None = None

    @property
    def request(self) -> Request:
        return self.requests[self.index]

    def compose(self) -> ComposeResult:
        yield Static(id="why-title")
        yield Static(id="why-message")
        with ScrollableContainer(id="why-top"):
            yield Static(id="why-split")
            yield Static(id="why-cache")
        yield StepNotes(id="why-steps", on_highlight=self.show_note)
        yield Static(id="why-note")
        yield Footer()

    def on_mount(self) -> None:
        self.explain()

    def on_resize(self) -> None:
        self.query_one("#why-top").set_class(self.size.width >= WIDE, "-wide")
        self.fit()

    def fit(self) -> None:
        """Give the split and cache lines what the steps do not need: a request of a few steps
        leaves them more than half the screen (the rest of the time, half: the steps scroll)."""
        steps = self.why.split.steps if self.why is not None and self.why.split is not None else []
        # The note box as tall as the longest note needs (up to NOTE_LINES): the same height on
        # every row, so the table does not jump as the cursor moves.
        width = max(self.size.width - 2, 1)
        lines = min(NOTE_LINES, max((-(-len(note_text(n)) // width) for n in steps), default=1))
        self.query_one("#why-note").styles.height = lines + 1  # and its border
        # what title, footer, note box and the steps' border and header leave
        free = self.size.height - 2 - (lines + 1) - 2
        self.query_one("#why-top").styles.max_height = max(free // 2, free - len(steps))
        self.call_after_refresh(self.say_what_scrolls)

    def title_text(self, why: Why | None) -> str:
        place = f" · {self.index + 1} of {len(self.requests)}" if len(self.requests) > 1 else ""
        wall = f" · {why.split.wall_ms:.1f} ms" if why is not None and why.split is not None else ""
        # The verdict on the first line: on a small terminal the cache lines may be scrolled away.
        verdict = f" · prefix cache: {why.cache.reason}" if why is not None and why.cache is not None else ""
        return f"why {self.request.label}{wall}{verdict}{place}"

    def explain(self) -> None:
        self.why = None
        self.query_one("#why-title", Static).update(self.title_text(None))
        self._show_parts(False)
        self.query_one("#why-message", Static).update(Text("reading the trace's steps …", style="dim"))
        self.run_worker(self._explain_in_thread, thread=True, exclusive=True, group="why")

    def _explain_in_thread(self) -> None:
        request = self.request
        why = self.explainer.explain(request)
        worker = get_current_worker()
        if not worker.is_cancelled:  # n / p moved on meanwhile: a newer worker shows its own
            self.app.call_from_thread(self.show, request, why)

    def _show_parts(self, shown: bool) -> None:
        for name in ("#why-split", "#why-cache", "#why-steps", "#why-note"):
            self.query_one(name).display = shown
        self.query_one("#why-message").display = not shown

    def show(self, request: Request, why: Why) -> None:
        if not self.is_attached or request is not self.request:
            return
        self.why = why
        self.query_one("#why-title", Static).update(self.title_text(why))
        if why.split is None or why.cache is None:
            self._show_parts(False)
            self.query_one("#why-message", Static).update(Text(why.unexplained or "nothing to explain", style="yellow"))
            return
        self._show_parts(True)
        self.query_one("#why-split", Static).update(split_table(why.split, self.model.ran_model))
        self.query_one("#why-cache", Static).update(cache_grid(why))
        steps = self.query_one("#why-steps", StepNotes)
        steps.border_title = f"{len(why.split.steps)} steps"
        steps.show(why.split.steps)
        steps.focus()
        self.show_note(0)
        self.fit()

    def say_what_scrolls(self) -> None:
        """Where the split and the cache lines overflow their half of the screen, the steps' title
        says how to reach the rest (tab focuses them; up / down scroll)."""
        if not self.is_attached or self.why is None or self.why.split is None:
            return
        more = " · the lines above scroll: tab, then up / down" if self.query_one("#why-top").max_scroll_y > 0 else ""
        self.query_one("#why-steps", StepNotes).border_title = f"{len(self.why.split.steps)} steps{more}"

    def show_note(self, row: int) -> None:
        notes = self.why.split.steps if self.why is not None and self.why.split is not None else []
        note = self.query_one("#why-note", Static)
        note.display = bool(notes)
        if 0 <= row < len(notes):
            step = notes[row]
            text = Text(note_text(step))
            text.stylize("bold", 0, len(f"step {step.step} {step.what}"))
            note.update(text)

    def action_request(self, delta: int) -> None:
        index = min(max(self.index + delta, 0), len(self.requests) - 1)
        if index == self.index:
            self.notify("no further request" if delta > 0 else "no earlier request", timeout=2)
            return
        self.index = index
        if self.on_move is not None:
            self.on_move(self.request)
        self.explain()
