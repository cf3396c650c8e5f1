"""The results view: the seed's table as a Textual ``DataTable``.

Its cells are ``render.results_grid``'s (the one layout every surface prints), so a ratio
shows its ``±`` interval exactly as the exports write it. What the view adds is how it
reads on a screen: a header that stays put while the rows scroll, the newest row kept
in view, titles wrapped to as few lines as the width allows, a noisy figure coloured in
its own cell, and the column definitions the help screen shows.
"""

from __future__ import annotations

import textwrap
from typing import ClassVar, Literal

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable

from wattscope.metrics import CV_LIMIT, FIGURES, RATIOS, common_decode_steps, title
from wattscope.render import (
    CV_MARK,
    PCT_TDP_TITLES,
    TABLE_FIGURES,
    TDP_TITLE_LINES,
    Grid,
    line_of,
    printable_grid,
    results_grid,
)
from wattscope.state import Snapshot

# A title wraps over at most this many lines; a table that still does not fit scrolls
# sideways with its identifying columns held.
MAX_TITLE_LINES = 3
# One space between columns (DataTable's own padding would put two: every cell counts at 80).
GAP = 1
FAILED_STYLE = "red"
NOISY_STYLE = "bold yellow"

# The columns that say which row it is (not figures); what help says about each.
IDENTITY = {
    "Model": "the model, by its short name",
    "Batch": "prompts per call: every figure is for the whole batch",
    "Precision": "the weights' precision: FP16 (the baseline of the ratios), BF16, INT8, NF4",
    "Engine": "how decode runs: eager, or graphs (the decode step replayed as a CUDA graph)",
}


def column_help(snap: Snapshot) -> list[tuple[str, str]]:
    """(column title, what it holds) for every column the results view can show,
    generated from ``metrics.FIGURES``' meanings under ``render``'s titles."""
    steps = common_decode_steps(r.figures.get("decode_steps") for r in snap.results if r.ok)
    out = [(name, meaning) for name, meaning in IDENTITY.items()]
    for name in TABLE_FIGURES:
        meaning = FIGURES[name].meaning
        if name == "decode_energy_j" and steps is not None:
            meaning += f"; decode_steps = {steps} in this run"
        out.append((title(name, steps), meaning))
    for r in RATIOS:
        out.append((r.title, f"{FIGURES[r.name].meaning}; ± the relative half-width of its 95% interval"))
    for heading, power in zip(PCT_TDP_TITLES, ("prefill_power_w", "decode_power_w")):
        out.append((heading, f"{FIGURES[power].meaning}, as % of the TDP (the default power limit)"))
    out.append((CV_MARK, f"after a figure: its window-to-window CV is above {CV_LIMIT:.0%} (the cell is coloured)"))
    return out


def _wrap(heading: str, width: int) -> list[str]:
    return textwrap.wrap(heading, width, break_long_words=False) or [""]


def _widths(grid: Grid, lines: int) -> list[int]:
    """Each column's width when its title may take ``lines`` lines: as wide as its
    widest cell, and at least as wide as wrapping the title into ``lines`` needs."""
    widths = []
    for i, heading in enumerate(grid.headers):
        w = max([len(r[i]) for r in grid.rows] + [max(len(word) for word in heading.split() or [""])])
        while len(_wrap(heading, w)) > lines:
            w += 1
        widths.append(w)
    return widths


def _fit(grid: Grid, available: int, max_lines: int) -> tuple[int, list[int]] | None:
    """The fewest title lines (<= ``max_lines``) at which the table fits ``available``
    cells, with the column widths; None where it does not fit at all."""
    for lines in range(1, max_lines + 1):
        widths = _widths(grid, lines)
        if sum(widths) + GAP * len(widths) <= available:
            return lines, widths
    return None


def layout(snap: Snapshot, available: int) -> tuple[Grid, int, list[int]]:
    """The grid to show ``available`` cells wide, its header height and column widths.
    The %TDP columns join where the table still fits with titles of at most
    ``render.TDP_TITLE_LINES`` lines (the rule the rich table of ``render`` follows)."""
    lines = [line_of(r) for r in snap.results]
    with_tdp = printable_grid(results_grid(lines, tdp=True, marks=True))
    fit = _fit(with_tdp, available, TDP_TITLE_LINES)
    if fit is not None:
        return with_tdp, fit[0], fit[1]
    grid = printable_grid(results_grid(lines, marks=True))
    fit = _fit(grid, available, MAX_TITLE_LINES)
    if fit is not None:
        return grid, fit[0], fit[1]
    return grid, MAX_TITLE_LINES, _widths(grid, MAX_TITLE_LINES)


_JUSTIFY: dict[str, Literal["left", "right"]] = {"l": "left", "r": "right"}


def _cell(text: str, align: str) -> str:
    """A left-aligned cell starts with the gap; a right-aligned one gets it from its width."""
    return " " * GAP + text if align == "l" else text


def _noisy(grid: Grid, col: int, cell: str) -> bool:
    """A figure cell that ``results_grid`` marked with ``CV_MARK`` (its CV is above the limit)."""
    return grid.align[col] == "r" and cell.endswith(CV_MARK)


class ResultsTable(DataTable[Text]):
    """The results as they arrive, the newest row in view. Keys scroll it (up, down,
    page up/down, home/end); left and right stay the replay's seek keys."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "scroll_up", "Scroll up", show=False),
        Binding("down", "scroll_down", "Scroll down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, show_cursor=False, cursor_type="none", cell_padding=0)
        self.snap: Snapshot | None = None
        self._shown_results: object = None
        self._shown_width = 0
        self._follow = False

    def show(self, snap: Snapshot) -> None:
        """Rebuild when a result arrives (RunState hands out the same tuple until then)."""
        self.snap = snap
        self._rebuild()

    def on_resize(self) -> None:
        self._rebuild()

    def _rebuild(self) -> None:
        snap = self.snap
        width = self.size.width
        if snap is None or width <= 0 or (snap.results is self._shown_results and width == self._shown_width):
            return
        self._shown_results, self._shown_width = snap.results, width
        grid, header_lines, widths = layout(snap, width - self.scrollbar_size_vertical)
        self.clear(columns=True)
        self.header_height = header_lines
        # The identifying columns stay while a table too wide for the screen scrolls sideways.
        self.fixed_columns = sum(1 for h in grid.headers if h in IDENTITY)
        for heading, al, w in zip(grid.headers, grid.align, widths):
            label = "\n".join(_cell(line, al) for line in _wrap(heading, w))
            self.add_column(Text(label, justify=_JUSTIFY[al]), width=w + GAP)
        for cells, ok in zip(grid.rows, grid.ok):
            row = []
            for i, cell in enumerate(cells):
                style = FAILED_STYLE if not ok else (NOISY_STYLE if _noisy(grid, i, cell) else "")
                row.append(Text(_cell(cell, grid.align[i]), style=style, justify=_JUSTIFY[grid.align[i]]))
            self.add_row(*row)
        self._follow = True

    def scroll_columns(self, direction: int) -> None:
        """Scroll sideways to the next column edge right (``direction`` > 0) or left, so
        a column is never cut at the held identifying columns."""
        widths = [c.get_render_width(self) for c in self.ordered_columns[self.fixed_columns:]]
        edges = [sum(widths[:i]) for i in range(len(widths))]
        x = round(self.scroll_x)
        if direction > 0:
            target = next((e for e in edges if e > x), x)
        else:
            target = next((e for e in reversed(edges) if e < x), 0)
        self.scroll_to(x=min(target, self.max_scroll_x), animate=False, immediate=True)

    def watch_virtual_size(self) -> None:
        # Follow the newest row once the new rows are measured (DataTable measures them
        # lazily, so a scroll right after adding them would use the old size).
        if self._follow:
            self._follow = False
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True)
