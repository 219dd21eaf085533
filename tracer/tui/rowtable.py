"""A one-line-per-row table that draws only the rows on screen (Textual's Line API).

Textual's DataTable builds, measures and lays out every row when rows are added: about
0.1 ms a row, so 2,000 requests or a 1,000-hop waterfall cost 0.1-0.3 s per change. Here a
subclass says how many rows there are and how to draw row i; a row is drawn when it scrolls
into view, and drawn lines are cached until the data, the width or the focus changes.

It behaves like a DataTable with a row cursor: up / down / page up / page down / home / end
move the cursor (and scroll to keep it in view), enter selects, a click highlights the row
under the mouse and a second click on it selects it, the wheel scrolls. The header stays on
the first line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

from rich.segment import Segment
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size, Spacing
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

CELL_PADDING = 1  # blank cells each side of a cell, as DataTable draws them


def set_virtual_size(view: ScrollView, size: Size) -> None:
    """Set a view's scrollable size; lay out the screen again only when that changes its height
    (auto height) or shows / hides its scrollbar. A screen layout costs tens of ms at 80x24
    (and the resizes it sends cost more frames), and a view whose content changes on every
    keystroke (the waterfall, the side panel) needs none. A view with `overflow-y: scroll`
    always shows its scrollbar (the live explorer's: tracer.tui.live.LIVE_CSS)."""
    if size == view.virtual_size:
        return
    height, overflow = view.styles.height, view.styles.overflow_y
    shows_bar = size.height > view.container_size.height if overflow == "auto" else overflow == "scroll"
    if (height is None or height.is_auto or not view.container_size
            or shows_bar != view.show_vertical_scrollbar or overflow not in ("auto", "scroll")):
        view.virtual_size = size
        return
    view.set_reactive(ScrollView.virtual_size, size)
    _update_scrollbars(view, size)
    view.refresh()


def _update_scrollbars(view: ScrollView, size: Size) -> None:
    """Textual's own update of a view's scrollbars and scroll limits for a new virtual size,
    without the screen layout that setting `virtual_size` asks for (Widget.virtual_size is
    Reactive(layout=True), textual 8.2.8 widget.py:357). Textual 8.2.8 has no public call for
    it: the private Widget._scroll_update (widget.py:4145) is what its own resize path runs
    (widget.py:4140, scroll_view.py:111). The one place servetrace calls private Textual API; a
    Textual without it gets the layout the public setter would have asked for (correct, slower)."""
    update = getattr(view, "_scroll_update", None)
    if update is None:
        view.refresh(layout=True)
    else:
        update(size)


@dataclass(frozen=True)
class Column:
    label: str
    width: int
    justify: str = "left"  # "left" or "right"


class RowTable(ScrollView, can_focus=True):
    """Subclasses implement `columns()` and `row_cells(index)`, and call `set_rows(count)`."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"rowtable--header", "rowtable--cursor", "rowtable--even-row"}
    DEFAULT_CSS = """
    RowTable {
        scrollbar-size-vertical: 1;  /* at 80 columns every cell counts */
        background: $surface;
        color: $foreground;
        overflow-x: hidden;
        overflow-y: auto;
        &:focus {
            background-tint: $foreground 5%;
            & > .rowtable--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .rowtable--header {
                background-tint: $foreground 5%;
            }
        }
        &:dark > .rowtable--even-row {
            background: $surface-darken-1 40%;
        }
        & > .rowtable--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .rowtable--even-row {
            background: $surface-lighten-1 50%;
        }
        & > .rowtable--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Select", show=False),
        Binding("up", "cursor_up", "Cursor up", show=False),
        Binding("down", "cursor_down", "Cursor down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,ctrl+home", "first", "Top", show=False),
        Binding("end,ctrl+end", "last", "Bottom", show=False),
    ]
    HEADER_HEIGHT = 1

    class RowHighlighted(Message):
        """The cursor moved to `cursor_row` (posted after the move, as DataTable does)."""

        def __init__(self, table: "RowTable", cursor_row: int) -> None:
            super().__init__()
            self.table, self.cursor_row = table, cursor_row

        @property
        def control(self) -> "RowTable":
            return self.table

    class RowSelected(RowHighlighted):
        """Enter, or a click on the highlighted row."""

    def __init__(self, *, zebra_stripes: bool = False, on_highlight: Callable[[int], None] | None = None,
                 **kwargs) -> None:
        """`on_highlight(row)` runs as soon as the cursor moves, before the screen repaints: what
        it changes is painted in the same frame (a RowHighlighted message, handled a few event
        loop turns later, would often cost a second paint and a second frame's wait)."""
        super().__init__(**kwargs)
        self.zebra_stripes = zebra_stripes
        self.on_highlight = on_highlight
        self.row_count = 0
        self.cursor_row = 0
        self._lines: dict[tuple[int, bool], Strip] = {}
        self._columns: list[Column] | None = None
        self._cache_key: tuple = ()

    # -- what subclasses provide -----------------------------------------------------------------

    def columns(self, width: int) -> list[Column]:
        """The columns for a table `width` cells wide (content widths, padding excluded)."""
        raise NotImplementedError

    def row_cells(self, index: int) -> Sequence[Text]:
        raise NotImplementedError

    # -- data ----------------------------------------------------------------------------------

    def set_rows(self, count: int, cursor: int = 0) -> None:
        """Show `count` rows (drawn on demand), the cursor on row `cursor`, scrolled to it."""
        self.row_count = count
        self.cursor_row = min(max(cursor, 0), max(count - 1, 0))
        self.invalidate()
        self._set_virtual_size(Size(self._content_width(), count + self.HEADER_HEIGHT))
        self.scroll_to(y=0, animate=False, force=True, immediate=True)
        self._scroll_cursor_into_view()
        self.refresh()

    def _set_virtual_size(self, size: Size) -> None:
        set_virtual_size(self, size)

    def invalidate(self) -> None:
        """Forget drawn lines and column widths (the rows' content changed)."""
        self._lines.clear()
        self._columns = None

    def _content_width(self) -> int:
        return self.scrollable_content_region.width

    def _layout_columns(self) -> list[Column]:
        if self._columns is None:
            self._columns = self.columns(self._content_width())
        return self._columns

    # -- drawing -------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self._content_width()
        key = (width, self.has_focus)
        if key != self._cache_key:  # focus changes the cursor's colours; width, the columns
            self._cache_key = key
            self.invalidate()
        if y < self.HEADER_HEIGHT:
            return self._line(-1, width)
        index = y - self.HEADER_HEIGHT + round(self.scroll_offset.y)
        if index >= self.row_count:
            return Strip.blank(width, self.rich_style)
        return self._line(index, width)

    def _line(self, index: int, width: int) -> Strip:
        cursor = index == self.cursor_row and index >= 0
        strip = self._lines.get((index, cursor))
        if strip is None:
            strip = self._lines[(index, cursor)] = self._draw(index, width, cursor)
        return strip

    def _draw(self, index: int, width: int, cursor: bool) -> Strip:
        base = self.rich_style
        if index < 0:
            cells: Sequence[Text] = [Text(c.label) for c in self._layout_columns()]
            base += self.get_component_rich_style("rowtable--header")
        else:
            cells = self.row_cells(index)
            if self.zebra_stripes and index % 2 == 0:
                base += self.get_component_rich_style("rowtable--even-row")
        line = Text(no_wrap=True, end="")
        pad = " " * CELL_PADDING
        for column, cell in zip(self._layout_columns(), cells):
            cell = cell.copy()
            cell.truncate(column.width, overflow="ellipsis")
            cell.align(column.justify, column.width)  # type: ignore[arg-type]
            line.append(pad)
            line.append_text(cell)
            line.append(pad)
        cursor_style = self.get_component_rich_style("rowtable--cursor") if cursor else None
        segments = Segment.apply_style(line.render(self.app.console), base, cursor_style)
        fill = base + cursor_style if cursor_style is not None else base  # the cursor spans the full width
        return Strip(segments).extend_cell_length(width, fill).crop(0, width).simplify()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()

    def on_resize(self) -> None:
        self.invalidate()
        self._set_virtual_size(Size(self._content_width(), self.row_count + self.HEADER_HEIGHT))

    # -- cursor --------------------------------------------------------------------------------

    def move_cursor(self, *, row: int, scroll: bool = True) -> None:
        if not self.row_count:
            return
        row = min(max(row, 0), self.row_count - 1)
        if row == self.cursor_row:
            return
        old, self.cursor_row = self.cursor_row, row
        self._refresh_row(old)
        self._refresh_row(row)
        if scroll:
            self._scroll_cursor_into_view()
        if self.on_highlight is not None:
            self.on_highlight(row)
        self.post_message(self.RowHighlighted(self, row))

    def _refresh_row(self, index: int) -> None:
        for cursor in (False, True):
            self._lines.pop((index, cursor), None)
        self.refresh_line(index + self.HEADER_HEIGHT)

    def _scroll_cursor_into_view(self) -> None:
        region = Region(0, self.cursor_row + self.HEADER_HEIGHT, 1, 1)
        self.scroll_to_region(region, animate=False, spacing=Spacing(top=self.HEADER_HEIGHT), force=True,
                              immediate=True)

    def _page_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - self.HEADER_HEIGHT)

    def action_cursor_up(self) -> None:
        self.move_cursor(row=self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(row=self.cursor_row + 1)

    def action_page_up(self) -> None:
        self.move_cursor(row=self.cursor_row - self._page_rows())

    def action_page_down(self) -> None:
        self.move_cursor(row=self.cursor_row + self._page_rows())

    def action_first(self) -> None:
        self.move_cursor(row=0)

    def action_last(self) -> None:
        self.move_cursor(row=self.row_count - 1)

    def action_select_cursor(self) -> None:
        if self.row_count:
            self.post_message(self.RowSelected(self, self.cursor_row))

    async def _on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < self.HEADER_HEIGHT:
            return
        row = offset.y - self.HEADER_HEIGHT + round(self.scroll_offset.y)
        if row >= self.row_count:
            return
        event.stop()
        if row == self.cursor_row:
            self.post_message(self.RowSelected(self, row))
        else:
            self.move_cursor(row=row)
