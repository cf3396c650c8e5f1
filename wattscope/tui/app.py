"""The live / replay TUI.

A worker thread drives the source (advances a replay on its clock, watches a live
session); a timer at ~4 Hz pulls one Snapshot and hands it to every widget. Nothing is
posted per sample, so a 1 kHz stream costs the UI four snapshots a second.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from wattscope.render import fmt_duration, markup_text, plain_text, table_note
from wattscope.safe_text import printable
from wattscope.replay import SEEK_S, SPEEDS, ReplayController
from wattscope.source import LiveSource, RunSource
from wattscope.state import RunState, Snapshot
from wattscope.tui.refresh import DEFAULT_FPS
from wattscope.tui.results import ResultsTable, column_help
from wattscope.tui.widgets import (
    PhasePanel,
    PowerGraph,
    SensorLine,
    WarningLog,
    phase_legend,
    warning_line,
)

if TYPE_CHECKING:
    from wattscope.session import LiveRun, Session

FRAME_S = 1.0 / DEFAULT_FPS
DRIVE_S = 0.05  # how often the worker advances a replay
STOP_WAIT_S = 60.0
EXPORT_FORMATS = ("md", "csv")
# Bindings whose id starts with this act on a replay only (hidden and refused live).
REPLAY_ID = "replay."
LONG_SEEK_S = 60.0


class SnapshotView(Protocol):
    """A widget that draws one frame from a snapshot."""

    def show(self, snap: Snapshot) -> None: ...


class HelpScreen(ModalScreen[None]):
    """The keys, generated from the app's bindings (one line per key the app accepts
    now, with the binding's tooltip, or without one its footer description), then what
    the graph and every column of the results hold (``results.column_help``)."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    RESULTS = "Results: ratios are to FP16 of the same model, batch and engine."

    def __init__(self, keys: list[tuple[str, str]], columns: list[tuple[str, str]], no_color: bool = False,
                 results: str = RESULTS, phases: dict[str, str] | None = None) -> None:
        super().__init__()
        self.keys = keys
        self.columns = columns
        self.no_color = no_color
        self.results = results
        self.phases = phases

    def compose(self) -> ComposeResult:
        text = Text("wattscope keys\n\n", style="bold")
        for k, what in self.keys:
            text.append(f"{k:>7}  ", style="bold")
            text.append(what + "\n")
        text.append("\nGraph: power on a fixed 0..TDP scale (z: zoomed to what is shown);\n"
                    "phase marks and the run time beneath:\n")
        text.append_text(phase_legend(self.no_color, self.phases))
        text.append(f"\n\n{self.results}\n", style="bold")
        for heading, meaning in self.columns:
            text.append(f"{heading}", style="bold")
            text.append(f"  {meaning}\n")
        with VerticalScroll(id="help"):
            yield Static(text)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class WarningsScreen(ModalScreen[None]):
    """Every warning the run state keeps, oldest first, scrollable."""

    BINDINGS = [Binding("escape,w,q", "dismiss", "Close")]

    def __init__(self, snap: Snapshot) -> None:
        super().__init__()
        self.snap = snap

    def compose(self) -> ComposeResult:
        snap = self.snap
        kept = len(snap.warnings)
        head = f"Warnings: {snap.warnings_total}"
        if kept < snap.warnings_total:
            head += f" (the last {kept} shown)"
        lines = [Text(head, style="bold")]
        lines += [warning_line(w) for w in snap.warnings] or [Text("no warnings", style="dim")]
        with VerticalScroll(id="warnings"):
            yield Static(Text("\n").join(lines))

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class ConfirmQuit(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Stop and quit"),
        Binding("n,escape", "answer(False)", "Keep running"),
    ]

    QUESTION = "A sweep is running.\n\nStop the runner and quit?"

    def __init__(self, question: str = QUESTION) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(
                f"{self.question} Everything measured so "
                "far stays in the recording.\n\n[b]y[/b] stop and quit    [b]n[/b] keep running"
            )

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class WattscopeApp(App[None]):
    """The screen for one ``RunSource``; the replay keys work when it has controls."""

    CSS_PATH = "app.tcss"
    TITLE = "wattscope"
    QUIT_QUESTION = ConfirmQuit.QUESTION  # asked before quitting a live run
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit",
                tooltip="quit (live sweep: asks, stops the runner, keeps the recording)"),
        Binding("e", "export", "Export", id="export",
                tooltip="export Markdown and CSV beside the recording (or here)"),
        Binding("p", "pause_display", "Pause display", id="pause-display",
                tooltip="pause / resume the display (the run goes on)"),
        Binding("question_mark", "help", "Help", id="help", key_display="?",
                tooltip="this help (ctrl+p: the command palette)"),
        Binding("z", "toggle_zoom", "Zoom", id="graph.zoom",
                tooltip="power graph: fixed 0..TDP scale / zoomed to the power shown"),
        Binding("w", "warnings", "Warnings", id="warnings", tooltip="all warnings, in full"),
        Binding("left_square_bracket", "scroll_results(-1)", "Table left", show=False, key_display="[",
                id="results.left", tooltip="results table: scroll left (up/down/pgup/pgdn: rows)"),
        Binding("right_square_bracket", "scroll_results(1)", "Table right", show=False, key_display="]",
                id="results.right", tooltip="results table: scroll right"),
        Binding("a", "whole_run", "Whole run", id="replay.whole",
                tooltip="power graph: the whole recording at once / the last minute"),
        Binding("space", "toggle_play", "Play/pause", id="replay.play", tooltip="play / pause the replay"),
        Binding("left", f"seek(-{SEEK_S})", f"-{SEEK_S:.0f}s", id="replay.back",
                tooltip=f"seek back {SEEK_S:.0f} s"),
        Binding("right", f"seek({SEEK_S})", f"+{SEEK_S:.0f}s", id="replay.forward",
                tooltip=f"seek forward {SEEK_S:.0f} s"),
        Binding("shift+left", f"seek(-{LONG_SEEK_S})", f"-{LONG_SEEK_S:.0f}s", show=False,
                id="replay.back-long", tooltip=f"seek back {LONG_SEEK_S:.0f} s"),
        Binding("shift+right", f"seek({LONG_SEEK_S})", f"+{LONG_SEEK_S:.0f}s", show=False,
                id="replay.forward-long", tooltip=f"seek forward {LONG_SEEK_S:.0f} s"),
        Binding("plus,equals_sign", "faster", "Faster", id="replay.faster", key_display="+",
                tooltip=f"replay faster (up to {SPEEDS[-1]:g}x)"),
        Binding("minus", "slower", "Slower", id="replay.slower", key_display="-",
                tooltip=f"replay slower (down to {SPEEDS[0]:g}x)"),
        Binding("g", "to_start", "Start", show=False, id="replay.start", tooltip="start of the recording"),
        Binding("G", "to_end", "End", show=False, id="replay.end", tooltip="end of the recording"),
    ]

    def __init__(self, source: RunSource, frame_s: float = FRAME_S, quiet_failure: bool = False) -> None:
        super().__init__()
        # An error inside the app ends it; with quiet_failure it is kept in ``failure``
        # for the caller (who stops the run and says it in one line) instead of being
        # printed as a traceback.
        self.quiet_failure = quiet_failure
        self.failure: BaseException | None = None
        self._leave = threading.Event()
        self.source = source
        self.controls = source.controls
        self.replay = self.controls is not None
        self.frame_s = frame_s
        self.display_paused = False
        self.stopping = False
        self.export_message = ""
        self.snap: Snapshot | None = None
        self._last_status: Text | None = None
        self._whole: Snapshot | None = None  # the replay's whole run, folded once

    def _handle_exception(self, error: Exception) -> None:
        if not self.quiet_failure:
            super()._handle_exception(error)
            return
        if self.failure is None:
            self.failure = error
        self.exit(return_code=1)

    def exit_soon(self) -> None:
        """Leave the app at its next frame; safe from any thread and a signal handler."""
        self._leave.set()

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="top"):
            yield PowerGraph(id="graph")
            yield PhasePanel(id="phase")
        yield Static(id="error")
        with Vertical(id="results"):
            yield ResultsTable(id="table")
            yield Static(id="table-note")
        yield SensorLine(id="sensor")
        yield WarningLog(id="log")
        yield Footer()

    PANEL_TITLE = "Run"
    RESULTS_TITLE = "Results"

    def on_mount(self) -> None:
        # Held, not queried per frame: a frame may fire while the app tears down.
        self._graph = self.query_one(PowerGraph)
        self._hold_views()
        self._note = self.query_one("#table-note", Static)
        self._status_bar = self.query_one("#status", Static)
        self._results = self.query_one("#results")
        self._error = self.query_one("#error", Static)
        self._graph_title()
        self.query_one("#phase").border_title = self.PANEL_TITLE
        self._results.border_title = self.RESULTS_TITLE
        self.frame()
        self.set_interval(self.frame_s, self.frame)
        self.drive()

    @work(thread=True, exclusive=True, group="drive")
    def drive(self) -> None:
        """Replay: advance on the clock. Live: the session's reader thread feeds the
        state; wait for the session to end and show its last frame at once."""
        worker = get_current_worker()
        controls = self.controls
        if controls is not None:
            while not worker.is_cancelled:
                controls.advance()
                time.sleep(DRIVE_S)
        elif self.source.running:  # not a run someone else feeds, nor one already over
            while not worker.is_cancelled:
                if self.source.wait(1.0):
                    self.call_from_thread(self.frame)
                    return

    # ------------------------------------------------------------------ frames

    def _hold_views(self) -> None:
        """The widgets each frame shows its snapshot in."""
        self._views: list[SnapshotView] = [self._graph, self.query_one(PhasePanel), self.query_one(ResultsTable),
                                           self.query_one(SensorLine), self.query_one(WarningLog)]

    def _draw(self) -> Snapshot:
        """Pull this screen's snapshot and show it in its views; return the run's part."""
        snap = self.source.snapshot()
        self.snap = snap
        for view in self._views:
            view.show(snap)
        self._results.border_title = f"Results {len(snap.results)}/{snap.configs_total or '?'}"
        self._note.update(self._table_note(snap))
        return snap

    def frame(self) -> None:
        """Pull one snapshot and show it (skipped while the display is paused)."""
        if self._leave.is_set():
            self.exit()
            return
        if self.display_paused:
            self._status()
            return
        snap = self._draw()
        self._status()
        error = self._error
        if snap.status in ("failed", "write-error"):
            error.update(plain_text(f"run failed: {snap.error or 'no reason given'} — the recording "
                                    "keeps everything measured up to here", style="bold"))
            error.display = True
        else:
            error.display = False

    @staticmethod
    def _table_note(snap: Snapshot) -> Text:
        """One line under the table: why rows failed first, then what ± and * mean."""
        if not snap.results:
            return Text("no results yet: the first row appears when a configuration finishes", style="dim")
        legend, *failures = table_note(snap).split("\n")
        return Text(" · ".join([*failures, legend]), style="dim")

    STOPPING = " stopping the runner… "

    def _status_head(self, status: str | None, t: Text) -> Text:
        """The status bar up to the run's status, the same for every screen: live or the
        replay position, a paused display, a stop under way, then the status."""
        src = self.controls
        if src is not None:
            state = "▶" if src.playing else "⏸"
            pos = (src.position_ns - src.start_ns) / 1e9
            dur = (src.end_ns - src.start_ns) / 1e9
            t.append(f" REPLAY {state} {src.speed:g}x {fmt_duration(pos)}/{fmt_duration(dur)} ", style="bold")
        else:
            t.append(" LIVE ", style="bold")
        if self.display_paused:
            t.append(" DISPLAY PAUSED ", style="bold reverse yellow")
        if self.stopping:
            t.append(self.STOPPING, style="yellow")
        if status is not None:
            style = {"running": "green", "completed": "cyan", "failed": "bold red",
                     "interrupted": "yellow"}.get(status, "dim")
            t.append(f" {status} ", style=style)
        return t

    def _show_status(self, t: Text) -> None:
        if t != self._last_status:
            self._last_status = t
            self._status_bar.update(t)

    def _status(self) -> None:
        snap = self.snap
        t = self._status_head(None if snap is None else snap.status, Text(" wattscope ", style="bold reverse"))
        if snap is not None:
            if snap.sweep_name:
                t.append(f" {printable(snap.sweep_name)} ")
            if snap.gpu_name:
                t.append(f" {printable(snap.gpu_name)}")
                t.append(" (simulated)" if snap.simulated else "")
        self._show_status(t)

    # ------------------------------------------------------------------ actions

    def _binding_for(self, action: str) -> Binding | None:
        name = action.split("(", 1)[0]
        return next((b for b in self.BINDINGS if isinstance(b, Binding)
                     and b.action.split("(", 1)[0] == name), None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        binding = self._binding_for(action)
        if binding is not None and (binding.id or "").startswith(REPLAY_ID) and not self.replay:
            return False
        return True

    def help_keys(self) -> list[tuple[str, str]]:
        """(key, what it does) for every binding this app accepts now, in BINDINGS order."""
        keys = []
        for b in self.BINDINGS:
            if isinstance(b, Binding) and (self.replay or not (b.id or "").startswith(REPLAY_ID)):
                keys.append((self.get_key_display(b), b.tooltip or b.description))
        return keys

    def _live_running(self) -> bool:
        return self.source.running and self.source.snapshot().status in ("waiting", "running")

    async def action_quit(self) -> None:
        if self.stopping:
            return
        if not self._live_running():
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.stopping = True
                self._status()
                self.stop_and_exit()

        self.push_screen(ConfirmQuit(self.QUIT_QUESTION), answered)

    @work(thread=True, exclusive=True, group="stop")
    def stop_and_exit(self) -> None:
        # The session stops the runner at its next window edge and finalises the
        # recording; that can take a while, so it runs off the UI thread while the
        # screen keeps updating.
        try:
            self.source.stop()
            self.source.wait(STOP_WAIT_S)
        finally:
            self.call_from_thread(self.exit)

    def action_pause_display(self) -> None:
        self.display_paused = not self.display_paused
        self.frame()

    def action_help(self) -> None:
        snap = self.snap or self.source.snapshot()
        self.push_screen(HelpScreen(self.help_keys(), column_help(snap), self.no_color))

    def action_warnings(self) -> None:
        self.push_screen(WarningsScreen(self.snap or self.source.snapshot()))

    def action_scroll_results(self, direction: int) -> None:
        self.query_one(ResultsTable).scroll_columns(direction)

    def action_toggle_zoom(self) -> None:
        self._graph.auto_zoom = not self._graph.auto_zoom
        self._graph_title()
        self._graph.redraw()

    def action_whole_run(self) -> None:
        if self._graph.whole is not None:
            self._graph.whole = None
        elif self._whole is not None:
            self._graph.whole = self._whole
        else:
            self.fold_whole_run()
            return
        self._graph_title()
        self._graph.redraw()

    @work(thread=True, exclusive=True, group="whole")
    def fold_whole_run(self) -> None:
        # Off the UI thread: an hour of samples takes a while to fold.
        if isinstance(self.source, ReplayController):
            whole = whole_run(self.source.recording, self.source.start_ns, self.source.end_ns)
            self.call_from_thread(self._show_whole, whole)

    def _show_whole(self, whole: Snapshot) -> None:
        self._whole = self._graph.whole = whole
        self._graph_title()
        self._graph.redraw()

    def _graph_title(self) -> None:
        scale = "zoomed" if self._graph.auto_zoom else "0..TDP"
        span = "whole run" if self._graph.whole is not None else "recent"
        self._graph.border_title = f"Power ({scale}, {span})"

    # The replay actions run only with controls: check_action refuses them otherwise.
    def action_toggle_play(self) -> None:
        if self.controls is not None:
            self.controls.toggle()
            self.frame()

    def action_seek(self, delta_s: float) -> None:
        if self.controls is not None:
            self.controls.seek(delta_s)
            self.frame()

    def action_faster(self) -> None:
        if self.controls is not None:
            self.controls.faster()
            self._status()

    def action_slower(self) -> None:
        if self.controls is not None:
            self.controls.slower()
            self._status()

    def action_to_start(self) -> None:
        if self.controls is not None:
            self.controls.to_start()
            self.frame()

    def action_to_end(self) -> None:
        if self.controls is not None:
            self.controls.to_end()
            self.frame()

    def action_export(self) -> None:
        path = self.source.path
        if not path:
            self._exported("nothing to export: this run has no recording file", "warning")
            return
        self.export(str(path))

    @work(thread=True, exclusive=True, group="export")
    def export(self, path: str) -> None:
        try:
            from wattscope.export import export
        except ImportError:
            self.call_from_thread(self._exported, "export is not available in this build", "error")
            return
        from wattscope.files import export_folder

        folder, why_here = export_folder(Path(path))
        written = []
        try:
            for fmt in EXPORT_FORMATS:
                out = folder / Path(path).with_suffix(f".{fmt}").name
                export(path, fmt, out_path=out)
                written.append(str(out))
        except Exception as e:  # shown, not raised: an export failure must not end the run
            self.call_from_thread(self._exported, f"export failed: {e}", "error")
            return
        where = f" (into the current folder: {why_here})" if why_here else ""
        self.call_from_thread(self._exported, f"exported {', '.join(written)}{where}", "information")

    def _exported(self, message: str, severity: SeverityLevel) -> None:
        self.export_message = message
        # A toast reads markup; the message names a path, which may hold brackets.
        self.notify(markup_text(message), severity=severity, timeout=8)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette offers every key of the app, in the words its binding gives (the
        help screen is made from the same bindings); replay keys only in a replay."""
        yield from super().get_system_commands(screen)  # Textual's own, Quit among them
        for b in self.BINDINGS:
            assert isinstance(b, Binding)
            if b.id in (None, "quit") or (b.id.startswith("replay.") and not self.replay):
                continue
            yield SystemCommand(b.description, b.tooltip, partial(self.run_action, b.action))


def whole_run(recording: Any, start_ns: int, end_ns: int) -> Snapshot:
    """The whole of a recording as one snapshot whose graph window spans the run: its
    events folded into a ``RunState`` as long as the run, seen from its last event."""
    state = RunState(window_s=max(1.0, (end_ns - start_ns) / 1e9 + 1.0))
    state.apply_all(recording.events())
    return state.snapshot(end_ns)


def make_app(source: RunSource, frame_s: float = FRAME_S, quiet_failure: bool = False) -> WattscopeApp:
    """The app for a source (a ``LiveSource``, a ``ReplayController``, or a test's
    source of frozen snapshots); what ``run`` and ``replay`` show, and what tests drive.
    ``quiet_failure``: see ``WattscopeApp``."""
    return WattscopeApp(source, frame_s=frame_s, quiet_failure=quiet_failure)


def run_app(session: Session, frame_s: float = FRAME_S) -> str:
    """``wattscope run``: start the session, show it until the user quits, wait for the
    recording to be finalised, return the run's status. The run never outlives the app
    (``session.watched``): an error inside the app, SIGTERM or SIGHUP close the app and
    stop the run, which is finalised before this returns."""
    source = LiveSource(session, path=str(session.output))
    run_watched(make_app(source, frame_s, quiet_failure=True), session)
    return source.status


def run_watched(app: WattscopeApp, run: LiveRun) -> None:
    """Start a live ``run`` (a sweep's ``Session`` or a serving ``LiveServe``) and show it in ``app`` until the user quits; an error inside the app,
    SIGTERM or SIGHUP close the app and stop the run, finalised before this returns."""
    from wattscope.session import watched

    with watched(run, on_signal=app.exit_soon):
        run.start()
        app.run()
        if app.failure is not None:
            raise app.failure


def run_replay_app(recording: Any, speed: float = 1.0, frame_s: float = FRAME_S) -> None:
    """``wattscope replay`` / ``wattscope demo``."""
    controller = ReplayController(recording, speed=speed)
    make_app(controller, frame_s).run()
