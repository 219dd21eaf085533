"""The help screen's text, generated from the screens' key bindings.

Each Binding says its key, its footer word (description) and, as its tooltip, the sentence the
help screen shows: one list per screen, read by the footer, the help and the app's action guard.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from rich.text import Text
from textual.binding import Binding

KEY_COLUMN = 19

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
