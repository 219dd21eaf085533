"""The explorer's stylesheet (Textual CSS), kept in Python so it ships with the package."""

CSS = """
#warning {
    background: $warning 30%;
    color: $text;
    height: auto;
    max-height: 3;
    padding: 0 1;
}
#requests {
    /* As tall as its rows, up to 8 lines: a one-request trace leaves no blank rows. */
    height: auto;
    max-height: 8;
    border-bottom: solid $primary-background;
}
#body {
    height: 1fr;
}
#waterfall {
    width: 1fr;
}
#side {
    /* Sized to the terminal: a third of it, never so narrow that keys stack on every line, nor so
       wide that the waterfall's bars shrink to a few cells (80 columns leave the waterfall 52). */
    width: 35%;
    min-width: 28;
    max-width: 64;
    border-left: solid $primary-background;
    padding: 0 0 0 1;  /* the scrollbar is the right margin */
}
#filter {
    display: none;
    dock: bottom;
    margin-bottom: 1;
}
#source-header-box {
    /* The hop's meaning and its walkthrough notes in full: scrolled (tab reaches it) when they
       are taller than this share of the screen, never cut. */
    height: auto;
    max-height: 40%;
    border-bottom: solid $primary-background;
}
#source-header {
    padding: 0 1;
}
#source-panes SourcePane {
    width: 1fr;
    border-right: solid $primary-background;
}
.pane-title {
    height: auto;
    max-height: 9;
    padding: 0 1;
}
SourcePane ScrollableContainer {
    height: 1fr;
    overflow-x: hidden;  /* lines are cut to the pane with an ellipsis; left / right move both panes */
}
#compare-summary, #compare-legend, #compare-status {
    height: auto;
    padding: 0 1;
}
#compare-status {
    display: none;
}
#compare-table {
    height: 1fr;
}
#compare-detail-box {
    height: 9;
    border-top: solid $primary-background;
}
HelpScreen {
    align: center middle;
}
#help-box {
    width: 80;
    max-width: 100%;
    height: auto;
    max-height: 100%;
    border: round $primary;
    background: $surface;
    padding: 0 1;
}
"""
