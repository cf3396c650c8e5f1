"""The display floor: how every surface writes a number and lays out the results table.

The TUI (``wattscope/tui``), the terminal printer (``headless.py``) and the exports
(``export.py``) all format through the functions here and draw the results table from
``results_grid``, so the same figure has the same column title, the same digits and
the same ratio notation everywhere. Titles, units and digits come from
``wattscope.metrics``; this module decides only how they are laid out. A surface picks
the columns it shows (source, weights, per-token energy, CVs, %TDP, a Note column) and
its blank (``-`` on a terminal, empty in an export).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape as escape_markup
from rich.table import Table
from rich.text import Text

from wattscope.metrics import (
    CV_LIMIT,
    CV_OF,
    FIGURES,
    RATIOS,
    RELOADED,
    RatioValue,
    common_decode_steps,
    is_baseline,
    precision_label,
    ratio_text,
    reloaded_groups,
    title,
)
from wattscope.safe_text import printable
from wattscope.state import ResultRow, Snapshot

MISSING = "-"
CV_MARK = "*"
PHASE_LABEL = {
    "idle": "idle",
    "load": "load",
    "warmup": "warm-up",
    "prefill": "prefill",
    "decode": "decode",
    "cooldown": "cool-down",
}
# The figures of the seed's table, in its column order.
TABLE_FIGURES = ("prefill_energy_j", "decode_energy_j", "decode_tok_s")
PCT_TDP_TITLES = ("Prefill %TDP", "Decode %TDP")


# ------------------------------------------------------------------- untrusted text
# Every name and message a surface shows may come from a recording, a config or a CSV:
# each surface writes it through one of these, never raw (``safe_text.printable`` says
# which characters are never written to a terminal).


def plain_text(text: object, style: str | None = None) -> Text:
    """A Rich ``Text`` of ``text`` on one line: never read as markup, no control sequences."""
    return Text(printable(text), style=style or "")


def markup_text(text: object) -> str:
    """``text`` for an API that reads Rich markup (a toast): brackets escaped."""
    return escape_markup(printable(text))


_MD_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", "&": "&amp;", "<": "&lt;", ">": "&gt;"})


def md_text(text: object) -> str:
    """``text`` inside Markdown: one line (a newline would end a table row or a list
    item), ``|`` and ``\\`` escaped so a cell stays one cell, HTML shown, not rendered."""
    return printable(text).translate(_MD_ESCAPES)


_TEX_ESCAPES = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
})


def tex_text(text: object) -> str:
    """``text`` inside LaTeX: one line (a blank line would end a table cell's paragraph),
    every special character escaped."""
    return printable(text).translate(_TEX_ESCAPES)


# A spreadsheet reads a cell starting with one of these as a formula (OWASP, CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell: a string with no control sequences (newlines kept: CSV quotes them),
    and a quote put before a leading formula character unless the cell is a number
    (``-0.5`` stays numeric). Anything not a string is returned as it is."""
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_PREFIXES):
        try:
            float(value)
        except ValueError:
            return "'" + printable(value, keep_newlines=True)
    return printable(value, keep_newlines=True)


# --------------------------------------------------------------------------- numbers


def _finite(v: object) -> float | None:
    """A printable number, or None for a blank (None, NaN, inf, pandas' NA)."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_fixed(v: object, digits: int, missing: str = MISSING) -> str:
    f = _finite(v)
    return missing if f is None else f"{f:.{digits}f}"


def fmt_ratio(v: RatioValue | float | None, missing: str = MISSING) -> str:
    """``5.12x``, and where the ratio has a 95% interval its relative half-width:
    ``5.12x ±2.1%`` (the interval is asymmetric on a linear scale; exports that need its
    ends carry them as numbers)."""
    f = _finite(v.value if isinstance(v, RatioValue) else v)
    if f is None:
        return missing
    hw = v.half_width if isinstance(v, RatioValue) else None
    if hw is None:
        return ratio_text(f)
    # Two significant places below 0.1%, so a tight interval never prints as ±0.0%.
    return f"{ratio_text(f)} ±{hw:.{1 if hw >= 0.001 else 2}%}"


def fmt_delta(v: object, missing: str = MISSING) -> str:
    """A difference of two ratios, signed: ``+0.12``."""
    f = _finite(v)
    # round first so a tiny negative difference prints +0.00, not -0.00
    return missing if f is None else f"{round(f, 2) + 0.0:+.2f}"


def fmt_percent(v: object, digits: int = 0, missing: str = "--%") -> str:
    """A value already in percent: ``27%``."""
    f = _finite(v)
    return missing if f is None else f"{f:.{digits}f}%"


def fmt_figure(name: str, v: object, missing: str = MISSING) -> str:
    """A figure with its digits; a fraction (a CV) as a percentage."""
    fig = FIGURES[name]
    if fig.unit == "fraction":
        f = _finite(v)
        return fmt_percent(None if f is None else f * 100, fig.digits, missing)
    return fmt_fixed(v, fig.digits, missing)


def fmt_marked(name: str, v: object, flagged: bool, missing: str = MISSING) -> str:
    """A figure with ``CV_MARK`` after it where its repeats vary by more than ``CV_LIMIT``."""
    return fmt_figure(name, v, missing) + (CV_MARK if flagged else "")


def fmt_span(lo: object, hi: object, unit: str = "") -> str:
    """A range of whole numbers, ``120-160W``, or one number where both ends print the same."""
    a, b = _finite(lo), _finite(hi)
    if a is None or b is None:
        return ""
    a_text, b_text = f"{a:.0f}", f"{b:.0f}"
    return f"{a_text}{unit}" if a_text == b_text else f"{a_text}-{b_text}{unit}"


def fmt_watts(v: float | None) -> str:
    return "--- W" if v is None else f"{v:.0f} W"


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


# ---------------------------------------------------------------------- run progress


def config_line(snap: Snapshot) -> str:
    c = snap.config
    if c is None:
        return "no configuration yet"
    kind = "synthetic" if c.synthetic else "real"
    return printable(f"{c.label} b{c.batch} {precision_label(c.precision)} ({kind})")


def config_number(snap: Snapshot) -> int:
    """1-based number of the configuration shown (the one running, or the last)."""
    return snap.config.index + 1 if snap.config is not None else 0


def phase_line(snap: Snapshot) -> str:
    phase = PHASE_LABEL.get(snap.phase or "", snap.phase or "-")
    # Measured rounds go on until the intervals are tight: the round has no fixed total.
    rep = f" round {snap.repeat}" if snap.repeat is not None else ""
    return printable(f"{phase}{rep}")


# --------------------------------------------------------------------- results table


@dataclass(frozen=True)
class ResultLine:
    """One row of the results table, from a live snapshot or an analysis table."""

    model: str
    batch: int
    precision: str  # a name or a label
    ok: bool
    figures: Mapping[str, float]
    ratios: Mapping[str, RatioValue | float | None]
    reason: str = ""
    flagged: frozenset[str] = frozenset()  # figures whose CV is above the limit
    source: str = ""
    weights: str = ""
    pct_tdp: tuple[float | None, float | None] = (None, None)  # prefill, decode
    engine: str = "eager"
    reloaded: bool = False  # its group's precisions were loaded one at a time

    @property
    def note(self) -> str:
        """What a Note column says about the row: why it failed, why it has no ratios,
        or that its group was reloaded per round."""
        if not self.ok:
            return f"failed: {self.reason}"
        if not is_baseline(self.precision) and _finite(_value(self.ratios.get(RATIOS[0].name))) is None:
            return "no FP16 baseline"
        return RELOADED if self.reloaded else ""


def _value(v: RatioValue | float | None) -> float | None:
    return v.value if isinstance(v, RatioValue) else v


def line_of(row: ResultRow) -> ResultLine:
    return ResultLine(
        model=row.model, batch=row.batch, precision=row.precision, ok=row.ok, figures=row.figures,
        ratios=row.ratios, reason=row.reason, flagged=row.flagged,
        pct_tdp=(row.prefill_pct_tdp, row.decode_pct_tdp), engine=row.engine, reloaded=row.reloaded,
    )


@dataclass(frozen=True)
class Grid:
    """A table as text: headers, rows of cells, and 'l'/'r' alignment per column."""

    headers: list[str]
    rows: list[list[str]]
    align: str
    ok: list[bool] = field(default_factory=list)  # per row, for a surface that colours failures


def results_grid(
    lines: Iterable[ResultLine],
    *,
    idle_subtracted: bool = False,
    source: bool = False,
    weights: bool = False,
    per_token: bool = False,
    cv: bool = False,
    tdp: bool = False,
    marks: bool = False,
    notes: bool = False,
    missing: str = MISSING,
) -> Grid:
    """The seed's table with ratios to FP16. Optional columns: ``source``, ``weights``,
    ``per_token`` (decode energy per token), ``cv`` (the CVs), ``tdp`` (average power as
    % of TDP), ``notes`` (a Note column, where any row has one). ``marks`` puts
    ``CV_MARK`` on figures whose repeats vary by more than ``CV_LIMIT``. A failed row
    says so in its Note, or, without a Note column, in its first figure cell."""
    lines = list(lines)
    steps = common_decode_steps(ln.figures.get("decode_steps") for ln in lines if ln.ok)
    Cell = Callable[[ResultLine], str]
    cols: list[tuple[str, str, Cell]] = []

    def figure(name: str) -> tuple[str, str, Cell]:
        def cell(ln: ResultLine) -> str:
            return fmt_marked(name, ln.figures.get(name), marks and name in ln.flagged, missing)

        return title(name, steps, idle_subtracted), "r", cell

    def ratio(name: str, heading: str) -> tuple[str, str, Cell]:
        return heading, "r", lambda ln: fmt_ratio(ln.ratios.get(name), missing)

    def pct_tdp(i: int) -> tuple[str, str, Cell]:
        return PCT_TDP_TITLES[i], "r", lambda ln: fmt_percent(ln.pct_tdp[i], 0, missing)

    if source:
        cols.append(("Source", "l", lambda ln: ln.source))
    cols += [
        ("Model", "l", lambda ln: ln.model),
        ("Batch", "r", lambda ln: str(ln.batch)),
        ("Precision", "l", lambda ln: precision_label(ln.precision)),
    ]
    if any(ln.engine != "eager" for ln in lines):
        # The engine is part of what a row measured: shown wherever one is not the default.
        cols.append(("Engine", "l", lambda ln: ln.engine))
    if weights:
        cols.append(("Weights", "l", lambda ln: ln.weights))
    first_figure = len(cols)
    cols += [figure(name) for name in TABLE_FIGURES]
    cols += [ratio(r.name, r.title) for r in RATIOS]
    if per_token:
        cols.append(figure("decode_energy_per_token_j"))
    if cv:
        cols += [figure(name) for name in CV_OF.values()]
    if tdp:
        cols += [pct_tdp(0), pct_tdp(1)]
    rows = []
    for ln in lines:
        cells = [cell(ln) for _, _, cell in cols]
        if not ln.ok and not notes:
            cells[first_figure] = "failed"
        rows.append(cells)
    headers = [h for h, _, _ in cols]
    align = "".join(a for _, a, _ in cols)
    if notes and any(ln.note for ln in lines):
        headers.append("Note")
        align += "l"
        rows = [cells + [ln.note] for cells, ln in zip(rows, lines)]
    return Grid(headers, rows, align, [ln.ok for ln in lines])


def markdown_table(grid: Grid) -> str:
    lines = ["| " + " | ".join(map(md_text, grid.headers)) + " |", "|" + "|".join("---" for _ in grid.headers) + "|"]
    lines += ["| " + " | ".join(map(md_text, r)) + " |" for r in grid.rows]
    return "\n".join(lines)


def printable_grid(grid: Grid) -> Grid:
    """``grid`` with every title and cell made printable (``safe_text.printable``), for a
    surface that sizes its columns from the text it will show."""
    return Grid([printable(h) for h in grid.headers], [[printable(c) for c in r] for r in grid.rows], grid.align, grid.ok)


def text_table(grid: Grid) -> str:
    """Plain aligned columns, two spaces apart, a dashed rule under the headers."""
    grid = printable_grid(grid)
    widths = [max(len(x) for x in col) for col in zip(grid.headers, *grid.rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if al == "l" else c.rjust(w) for c, w, al in zip(cells, widths, grid.align)).rstrip()

    return "\n".join([line(grid.headers), "  ".join("-" * w for w in widths)] + [line(r) for r in grid.rows])


def _rich_table(grid: Grid, flagged: list[bool]) -> Table:
    # One space between columns: the titles are long, and at 80 columns every cell counts.
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), expand=False, show_edge=False)
    for i, (name, al) in enumerate(zip(grid.headers, grid.align)):
        # A narrow screen wraps a title of several words over several lines; it never
        # renames it, and never breaks a one-word title (Model, Precision) or its cells.
        table.add_column(name, justify="left" if al == "l" else "right", overflow="fold",
                         no_wrap=" " not in name, style="bold" if i == 0 else None)
    for cells, ok, flag in zip(grid.rows, grid.ok, flagged):
        table.add_row(*map(plain_text, cells), style="red" if not ok else ("yellow" if flag else None))
    return table


# The %TDP columns join the results table where its titles then take at most this many lines.
TDP_TITLE_LINES = 2


def _title_lines(table: Table, width: int) -> int | None:
    """How many lines the titles of ``table`` take ``width`` cells wide; None where the
    table does not fit."""
    console = Console(width=width, file=io.StringIO())
    if table.__rich_measure__(console, console.options).minimum > width:
        return None
    return len(console.render_lines(table, console.options)) - table.row_count


def results_table(snap: Snapshot, width: int = 80) -> Table:
    """The results table on a terminal ``width`` cells wide, filling in as results
    arrive: figures whose repeats vary by more than ``CV_LIMIT`` marked, failed rows in
    red, and the %TDP columns where the screen is wide enough for them."""
    lines = [line_of(r) for r in snap.results]
    flagged = [bool(ln.flagged) for ln in lines]
    with_tdp = _rich_table(results_grid(lines, tdp=True, marks=True), flagged)
    title_lines = _title_lines(with_tdp, width)
    if title_lines is not None and title_lines <= TDP_TITLE_LINES:
        return with_tdp
    return _rich_table(results_grid(lines, marks=True), flagged)


def failure_lines(rows: Iterable[ResultRow]) -> list[str]:
    return [
        printable(f"failed {r.model} b{r.batch} {precision_label(r.precision)}: {r.reason}") for r in rows if not r.ok
    ]


def table_note(snap: Snapshot) -> str:
    """The lines under a terminal's results table: what the ratios are, what a mark
    means, and why each failed row failed."""
    notes = ["ratios vs FP16 of the same model and batch"]
    if any(v is not None and v.half_width is not None for r in snap.results for v in r.ratios.values()):
        notes.append("± half-width of the 95% interval over paired rounds")
    if any(r.flagged for r in snap.results):
        notes.append(f"{CV_MARK} window-to-window CV > {CV_LIMIT:.0%}")
    return "\n".join(["; ".join(notes), *failure_lines(snap.results), *reload_lines(snap.results)])


def reload_lines(rows: Iterable[ResultRow]) -> list[str]:
    """One line per group whose precisions were loaded one at a time."""
    groups = reloaded_groups((r.model, r.batch, r.engine, r.ok, r.reloaded) for r in rows)
    return [printable(f"{g}: {RELOADED}") for g in groups]


def snapshot_markdown(snap: Snapshot) -> str:
    """The final results of a run as a Markdown table (for logs), with %TDP and marks."""
    return markdown_table(results_grid((line_of(r) for r in snap.results), tdp=True, marks=True))
