"""Every screen's keys, one list per screen, and the help screen's text generated from them.

Each Binding says its key, its footer word (description) and, as its tooltip, the sentence the
help screen shows: the screens take their BINDINGS from these lists, so the footer, the help and
the app's action guard read the same words.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from rich.text import Text
from textual.binding import Binding

KEY_COLUMN = 19

# The main view (tracer.tui.app.ExplorerApp). n / p move through the request's hops in any trace:
# not "replay" words, which would read as the `servetrace replay` command.
MAIN_KEYS = [
    Binding("q", "quit", "quit"),
    Binding("n", "next_hop", "next hop", tooltip="the request's next hop (the state panel follows)"),
    Binding("p", "previous_hop", "prev hop", tooltip="the request's previous hop"),
    Binding("right_square_bracket", "next_step", "next step", show=False, tooltip="the request's next engine step"),
    Binding("left_square_bracket", "previous_step", "prev step", show=False, tooltip="the request's previous engine step"),
    Binding("s", "source", "source", tooltip="source pane for the focused hop"),
    Binding("w", "why", "why", tooltip="why the request took its time; its prefix-cache miss"),
    Binding("c", "compare", "compare", tooltip="compare the two traces step by step (needs TRACE2)"),
    Binding("x", "switch_trace", "other trace", show=False, tooltip="show the other trace"),
    Binding("slash", "filter", "filter", tooltip="filter requests by id or status; 'hop:kv' filters hops"),
    Binding("question_mark", "help", "help", tooltip="this help"),
    Binding("escape", "close_filter", "clear filter", show=False, tooltip="close the filter box; again: clear the filter"),
]

SOURCE_KEYS = [
    Binding("escape,q", "app.pop_screen", "back"),
    Binding("e", "other_engine", "other engine", tooltip="the next upstream engine of the catalog (vLLM, SGLang ...)"),
    Binding("t", "next_target", "next target", tooltip="the hop's next target in these engines"),
    Binding("n", "hop(1)", "next hop", tooltip="the request's next hop, without leaving the source"),
    Binding("p", "hop(-1)", "prev hop", tooltip="the request's previous hop"),
    # Priority: a focused code pane would scroll only itself; both panes move together.
    Binding("right", "scroll_code(1)", "right", show=False, priority=True, tooltip="scroll both code panes right"),
    Binding("left", "scroll_code(-1)", "left", show=False, priority=True, tooltip="scroll both code panes left"),
]

COMPARE_KEYS = [
    Binding("escape,q", "app.pop_screen", "back"),
    Binding("g", "first_divergence", "first divergence"),
    Binding("n", "next_divergence", "next diff", tooltip="the next step that differs"),
    Binding("p", "previous_divergence", "prev diff", tooltip="the previous step that differs"),
]

# The "why" view (tracer.tui.why_screen): n / p walk the requests the main view lists.
WHY_KEYS = [
    Binding("escape,q", "app.pop_screen", "back"),
    Binding("n", "request(1)", "next request", tooltip="explain the next request of the requests table"),
    Binding("p", "request(-1)", "prev request", tooltip="explain the previous request"),
]

HELP_KEYS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

# Keys the tables and Textual provide, not bindings of ours: said once here for the help screen.
TABLE_KEYS = (
    ("up/down, mouse", "move in the focused table (tab switches table)"),
    ("enter", "from the requests table: go to the request's hops"),
)


def _keys(binding: Binding, key_display: Callable[[Binding], str]) -> str:
    keys = [Binding(key.strip(), binding.action, binding.description, key_display=binding.key_display)
            for key in binding.key.split(",")]
    return " / ".join(key_display(key) for key in keys)


def help_section(title: str, bindings: Iterable[Binding], key_display: Callable[[Binding], str],
                 extra: Sequence[tuple[str, str]] = ()) -> Text:
    """One screen's keys: a title line, then 'keys  what they do' per binding (its tooltip, else
    its footer description). Plain text, not markup: keys such as '[' would read as tags."""
    rows = list(extra) + [(_keys(b, key_display), b.tooltip or b.description) for b in bindings]
    text = Text(title, style="bold")
    for keys, what in rows:
        text.append(f"\n  {keys.ljust(KEY_COLUMN)}{what}")
    return text
