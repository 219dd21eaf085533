"""Screens over the main view: the help here; the source pane (tracer.tui.source_screen) and
the trace comparison (tracer.tui.compare_screen) in modules of their own, re-exported."""
from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tracer.tui.compare_screen import CompareScreen
from tracer.tui.keys import HELP_KEYS, TABLE_KEYS, help_section
from tracer.tui.source_screen import SYNTAX_THEME, SourcePane, SourceScreen
from tracer.tui.why_screen import WhyScreen

__all__ = ["CompareScreen", "HelpScreen", "SYNTAX_THEME", "SourcePane", "SourceScreen", "WhyScreen"]


HELP_ABOUT = """\
[b]servetrace explorer[/b]: one request from HTTP to the forward pass and back."""
HELP_STATE = """\
The state panel shows the engine after the focused hop: queue lengths, KV
usage, the request's blocks and its matched prefix, read from span attributes."""


class HelpScreen(ModalScreen):
    """Every screen's keys, from their bindings (tracer.tui.keys)."""

    BINDINGS = HELP_KEYS

    def __init__(self, main_bindings: Sequence[Binding]) -> None:
        super().__init__()
        self.main_bindings = main_bindings

    def text(self) -> Text:
        display = self.app.get_key_display
        sections = [
            Text.from_markup(HELP_ABOUT),
            help_section("Main screen", self.main_bindings, display, TABLE_KEYS),
            help_section("Source pane", SourceScreen.BINDINGS, display),
            help_section("Compare", CompareScreen.BINDINGS, display),
            help_section("Why (the request's time and prefix-cache miss)", WhyScreen.BINDINGS, display),
            Text(HELP_STATE),
        ]
        return Text("\n\n").join(sections)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(self.text(), id="help-text")
