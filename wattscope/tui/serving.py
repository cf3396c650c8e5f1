"""The serving screen: a serve-bench run, live or replayed.

The sweep app's frame with serving panels: the same power graph (idle and load phases
marked), a panel with the phase now, offered and achieved rate, requests in flight,
ended well or not, the running attribution (J per prefill and decode token with their
95% intervals, the idle / prefill / decode energy shares), and the table of load phases
as the serving report prints it (``serve_report.serving_grid``). Everything is drawn
from ``ServeSnapshot``s pulled at the frame rate; the keys are the sweep app's (quit,
pause display, help, zoom, warnings and, in replay, play/seek/speed).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Footer, Static

from wattscope.render import MISSING, Grid, fmt_duration, fmt_fixed, fmt_percent, fmt_watts, plain_text
from wattscope.safe_text import printable
from wattscope.serve.analysis import RateResult
from wattscope.serve.source import LiveServe, ServeReplay, ServeSource
from wattscope.serve.state import ServeSnapshot
from wattscope.serve_report import serving_grid
from wattscope.state import Snapshot
from wattscope.tui.app import FRAME_S, HelpScreen, WattscopeApp, run_watched
from wattscope.tui.results import FAILED_STYLE, ResultsTable
from wattscope.tui.widgets import PowerGraph, WarningLog

RUNNING_MARK = "▶ "  # the running phase's row: its figures so far
# What each column of the phases table holds (the help screen).
COLUMN_HELP = [
    ("Precision", "the engine's precision; ▶ marks the phase running now: figures so far, recomputed each second, "
                  "without the requests still in flight (their energy is in, their tokens not yet)"),
    ("Offered /s", "the open-loop Poisson arrival rate offered"),
    ("Achieved /s", "requests that ended well / the phase's span"),
    ("Requests ok/failed", "requests that ended well / with a failure (reasons in the recording)"),
    ("J/prefill tok", "J per prompt token above idle, all in (with its share of its steps' energy), ± the half-width "
                      "of its 95% interval"),
    ("J/decode tok", "J per generated token above idle, all in, ± the half-width of its 95% interval"),
    ("J/step", "J per engine step whatever its tokens (steps counted from the bursts of streamed tokens), ± its "
               "interval; blank where the bursts do not count steps"),
    ("J/decode tok (steps)", "the same fit on the engine's logged steps (the ground truth), where it logs them"),
    ("Idle share", "energy attributed to idle / measured energy (idle power x time, plus intervals whose tokens are fitted at no energy), ± its interval"),
    ("Measured J", "the counter's energy over the phase's intervals"),
    ("Fit", "ok, or why the fit is poor (then no per-token figures)"),
]
# The sweep app's keys this screen has (all but export and the whole-run graph).
KEPT = ("pause-display", "help", "graph.zoom", "warnings", "results.left", "results.right")


def _phase_words(snap: ServeSnapshot) -> str:
    now = snap.now
    if now is None:
        return snap.status
    what = "idle" if now.phase == "idle" else f"load {now.index + 1} at {fmt_fixed(now.rate_rps, 2)}/s"
    return f"{now.precision} {what} {fmt_duration(snap.phase_elapsed_s)}"


class ServePanel(Widget):
    """The phase now and its figures so far."""

    snap: ServeSnapshot | None = None

    def show(self, snap: ServeSnapshot) -> None:
        self.snap = snap
        self.refresh()

    def render(self) -> Text:
        snap = self.snap
        if snap is None or snap.status == "waiting":
            return Text("waiting for the run to start…", style="dim")
        lines = []

        def line(label: str, text: str, style: str = "") -> None:
            t = Text(f"{label:<10}", style="dim", no_wrap=True, overflow="ellipsis")
            t.append_text(plain_text(text, style=style or None))
            lines.append(t)

        count = f"{min(snap.phases_done + 1, snap.phases_total)}/{snap.phases_total}"
        line("Phase", f"{_phase_words(snap)} ({count})", "bold")
        cur = snap.current
        offered = fmt_fixed(snap.now.rate_rps, 2) if snap.now is not None and snap.now.phase == "load" else MISSING
        line("Rate /s", f"offered {offered} · achieved {fmt_fixed(cur.achieved_rps, 2) if cur else MISSING}")
        flight = MISSING if snap.in_flight is None else str(snap.in_flight)
        line("Requests", f"{flight} in flight · {snap.ok} ok · {snap.failed} failed")
        cells = _cells(cur) if cur is not None else {}
        line("J/prefill", f"{cells.get('J/prefill tok', MISSING)} per token")
        line("J/decode", f"{cells.get('J/decode tok', MISSING)} per token")
        if cur is not None and not cur.fit.ok:
            line("Fit", f"poor so far: {cur.fit.reason}")
        else:
            idle, pre, dec = snap.shares
            line("Energy", f"idle {fmt_percent(_pct(idle))} · prefill {fmt_percent(_pct(pre))} · "
                           f"decode {fmt_percent(_pct(dec))}")
        g = snap.power.gpu
        line("Power", f"{fmt_watts(g.latest_w if g else None)} · phase avg {fmt_watts(g.phase_avg_w if g else None)}")
        return Text("\n", no_wrap=True, overflow="ellipsis").join(lines)


def _pct(share: float) -> float:
    return share * 100 if math.isfinite(share) else math.nan


def _cells(result: RateResult) -> dict[str, str]:
    """One phase's cells as the serving report prints them, by column heading."""
    grid = serving_grid([result])
    return dict(zip(grid.headers, grid.rows[0]))


def phases_grid(snap: ServeSnapshot) -> Grid:
    """The phases table: ended load phases, then the running one marked, in the
    serving report's columns and formats."""
    results = list(snap.rates) + ([snap.current] if snap.current is not None else [])
    grid = serving_grid(results)
    rows = [list(r) for r in grid.rows]
    if snap.current is not None and rows:
        rows[-1][0] = RUNNING_MARK + rows[-1][0]
    return Grid(grid.headers, rows, grid.align, grid.ok)


def _justify(align: str) -> Literal["left", "right"]:
    return "left" if align == "l" else "right"


class PhasesTable(ResultsTable):
    """The load phases as the serving report prints them (its grid, one line of
    headings), newest in view; scrolls sideways as the sweep's results table does."""

    grid: Grid | None = None

    def show_grid(self, grid: Grid) -> None:
        if self.grid is not None and (self.grid.headers, self.grid.rows) == (grid.headers, grid.rows):
            return
        self.grid = grid
        self._rebuild()

    def _rebuild(self) -> None:
        grid = self.grid
        if grid is None:
            return
        self.clear(columns=True)
        self.fixed_columns = 1  # the precision stays in view
        for heading, al in zip(grid.headers, grid.align):
            self.add_column(Text(" " + heading, justify=_justify(al)))
        for cells, ok in zip(grid.rows, grid.ok):
            self.add_row(*(Text(" " + printable(c), style="" if ok else FAILED_STYLE, justify=_justify(al))
                           for c, al in zip(cells, grid.align)))
        self._follow = True


# The phases a serving run marks on the graph; "load" is its offered load here.
SERVING_PHASES = {"idle": "idle (and the engine's start)", "load": "offered load at one rate"}


class ServeApp(WattscopeApp, inherit_bindings=False):
    """The screen for one ``ServeSource``."""

    CSS = """
    #top { height: 45%; min-height: 11; }
    #phase { width: 1fr; max-width: 60; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    BINDINGS = [
        *App.BINDINGS,
        Binding("q", "quit", "Quit", id="quit",
                tooltip="quit (live run: asks, stops the load and the engine, keeps the recording)"),
        *[b for b in WattscopeApp.BINDINGS if isinstance(b, Binding)
          and (b.id in KEPT or ((b.id or "").startswith("replay.") and b.id != "replay.whole"))],
    ]

    def __init__(self, source: ServeSource, frame_s: float = FRAME_S, quiet_failure: bool = False) -> None:
        super().__init__(source, frame_s=frame_s, quiet_failure=quiet_failure)
        self.serve_source = source
        self.serve_snap: ServeSnapshot | None = None
        self._table_key: tuple[Any, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="top"):
            yield PowerGraph(id="graph")
            yield ServePanel(id="phase")
        yield Static(id="error")
        with Vertical(id="results"):
            yield PhasesTable(id="table")
            yield Static(id="table-note")
        yield WarningLog(id="log")
        yield Footer()

    PANEL_TITLE = "Serving"
    RESULTS_TITLE = "Load phases"

    def _hold_views(self) -> None:
        self._serve_panel = self.query_one(ServePanel)
        self._warn_log = self.query_one(WarningLog)
        self._phase_table = self.query_one(PhasesTable)

    def _draw(self) -> Snapshot:
        snap = self.serve_source.serving()
        self.serve_snap, self.snap = snap, snap.power
        self._graph.show(snap.power)
        self._serve_panel.show(snap)
        self._warn_log.show(snap.power)
        self._show_table(snap)
        return snap.power

    def _show_table(self, snap: ServeSnapshot) -> None:
        grid = phases_grid(snap)
        self._phase_table.show_grid(grid)
        self._results.border_title = f"Load phases: {len(snap.rates)} ended"
        notes = ["± half-width of the 95% interval", "an ended phase is final once the next one ends",
                 "? the columns"]
        if snap.current is not None:
            notes.insert(0, f"{RUNNING_MARK.strip()} running, figures so far")
        self._note.update(Text(" · ".join(notes) if grid.rows else
                               "no load phase yet: the first row appears when a load phase starts", style="dim"))

    STOPPING = " stopping the load… "
    QUIT_QUESTION = "A serving run is going.\n\nStop the load and the engine and quit?"

    def _status(self) -> None:
        snap = self.serve_snap
        t = self._status_head(None if snap is None else snap.status,
                              Text(" wattscope ", style="bold reverse", no_wrap=True, overflow="ellipsis"))
        if snap is not None:
            if snap.model:
                t.append(f" {printable(snap.model)}")
            if snap.now is not None:
                t.append(f" {printable(snap.now.precision)}", style="bold")
            p = snap.power
            if p.synthetic:
                t.append(" synthetic weights", style="yellow")
            if p.gpu_name:
                t.append(f" · {printable(p.gpu_name)}")
                t.append(" (simulated)" if p.simulated else "")
        self._show_status(t)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_keys(), COLUMN_HELP, self.no_color,
                                    results="Load phases: the serving report's table, per precision and offered rate.",
                                    phases=SERVING_PHASES))

    def _live_running(self) -> bool:
        return self.source.running and self.source.status in ("waiting", "running")


def run_serve_app(source: LiveServe, frame_s: float = FRAME_S) -> str:
    """``serve-bench`` on a terminal, as ``run_app`` for sweeps: start the run, show it
    until the user quits, wait for the recording to be finalised, return the run's status.
    The run never outlives the app (``app.run_watched``)."""
    run_watched(ServeApp(source, frame_s, quiet_failure=True), source)
    return source.status


def run_serve_replay_app(recording: Any, speed: float = 1.0, frame_s: float = FRAME_S) -> None:
    """``wattscope replay`` of a serving recording."""
    ServeApp(ServeReplay(recording, speed=speed), frame_s).run()
