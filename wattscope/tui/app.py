"""The live / replay TUI.

A worker thread drives the source (advances a replay on its clock, watches a live
session); a timer at ~4 Hz pulls one Snapshot and hands it to every widget. Nothing is
posted per sample, so a 1 kHz stream costs the UI four snapshots a second.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from wattscope import events as ev
from wattscope.render import fmt_duration
from wattscope.replay import SEEK_S, ReplayController
from wattscope.state import LiveSource, RunState, Snapshot
from wattscope.tui.widgets import (
    PhasePanel,
    PowerGraph,
    RatioTable,
    SensorLine,
    WarningLog,
    phase_legend,
)

FRAME_S = 0.25  # ~4 Hz
DRIVE_S = 0.05  # how often the worker advances a replay
STOP_WAIT_S = 60.0
EXPORT_FORMATS = ("md", "csv")
REPLAY_ACTIONS = {"toggle_play", "seek", "faster", "slower", "to_start", "to_end"}


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, replay: bool) -> None:
        super().__init__()
        self.replay = replay

    def compose(self) -> ComposeResult:
        keys = [
            ("q", "quit (live sweep: asks, stops the runner, keeps the recording)"),
            ("e", "export the tables (Markdown, CSV) beside the recording"),
            ("p", "pause / resume the display (the run goes on)"),
            ("?", "this help        ctrl+p  command palette"),
        ]
        if self.replay:
            keys += [
                ("space", "play / pause the replay"),
                ("← →", f"seek {SEEK_S:.0f} s (shift: 60 s)"),
                ("+ -", "replay speed 0.25x .. 64x"),
                ("g G", "start / end of the recording"),
            ]
        text = Text("wattscope keys\n\n", style="bold")
        for k, what in keys:
            text.append(f"{k:>6}  ", style="bold")
            text.append(what + "\n")
        text.append("\nGraph: power on a fixed 0..TDP scale; phase marks beneath:\n")
        text.append_text(phase_legend())
        text.append("\n\nTable: ratios to FP16 of the same model and batch;\n"
                    "* marks a CV above 3 % across repeats.")
        with Vertical(id="help"):
            yield Static(text)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class ConfirmQuit(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Stop and quit"),
        Binding("n,escape", "answer(False)", "Keep running"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(
                "A sweep is running.\n\nStop the runner and quit? Everything measured so "
                "far stays in the recording.\n\n[b]y[/b] stop and quit    [b]n[/b] keep running"
            )

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class WattscopeApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "wattscope"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("e", "export", "Export"),
        Binding("p", "pause_display", "Pause display"),
        Binding("question_mark", "help", "Help"),
        Binding("space", "toggle_play", "Play/pause"),
        Binding("left", f"seek(-{SEEK_S})", "-10s"),
        Binding("right", f"seek({SEEK_S})", "+10s"),
        Binding("shift+left", "seek(-60)", "-60s", show=False),
        Binding("shift+right", "seek(60)", "+60s", show=False),
        Binding("plus,equals_sign", "faster", "Faster"),
        Binding("minus", "slower", "Slower"),
        Binding("g", "to_start", "Start", show=False),
        Binding("G", "to_end", "End", show=False),
    ]

    def __init__(self, source: LiveSource | ReplayController, frame_s: float = FRAME_S) -> None:
        super().__init__()
        self.source = source
        self.replay = isinstance(source, ReplayController)
        self.frame_s = frame_s
        self.display_paused = False
        self.stopping = False
        self.export_message = ""
        self.snap: Snapshot | None = None

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        with Horizontal(id="top"):
            yield PowerGraph(id="graph")
            yield PhasePanel(id="phase")
        yield Static(id="error")
        with VerticalScroll(id="results"):
            yield RatioTable(id="table")
        yield SensorLine(id="sensor")
        yield WarningLog(id="log")
        yield Footer()

    def on_mount(self) -> None:
        # Held, not queried per frame: a frame may fire while the app tears down.
        self._views = [self.query_one(w) for w in (PowerGraph, PhasePanel, RatioTable, SensorLine, WarningLog)]
        self._status_bar = self.query_one("#status", Static)
        self._results = self.query_one("#results")
        self._error = self.query_one("#error", Static)
        self.query_one("#graph").border_title = "Power"
        self.query_one("#phase").border_title = "Run"
        self._results.border_title = "Results"
        self.frame()
        self.set_interval(self.frame_s, self.frame)
        self.drive()

    @work(thread=True, exclusive=True, group="drive")
    def drive(self) -> None:
        """Replay: advance on the clock. Live: the session's reader thread feeds the
        state; wait for the session to end and show its last frame at once."""
        worker = get_current_worker()
        if not self.replay and self.source.session is None:
            return  # a bare RunState: whoever feeds it owns its life
        while not worker.is_cancelled:
            if self.replay:
                self.source.advance()
                time.sleep(DRIVE_S)
            elif self.source.wait(1.0) and self.source.session is not None:
                self.call_from_thread(self.frame)
                return

    # ------------------------------------------------------------------ frames

    def frame(self) -> None:
        """Pull one snapshot and show it (skipped while the display is paused)."""
        if self.display_paused:
            self._status()
            return
        snap = self.source.snapshot()
        self.snap = snap
        for view in self._views:
            view.show(snap)
        self._status()
        self._results.border_title = f"Results {len(snap.results)}/{snap.configs_total or '?'}"
        error = self._error
        if snap.status == "failed":
            error.update(Text(f"run failed: {snap.error or 'no reason given'} — the recording "
                              "keeps everything measured up to here", style="bold"))
            error.display = True
        else:
            error.display = False

    def _status(self) -> None:
        snap = self.snap
        t = Text(" wattscope ", style="bold reverse")
        if self.replay:
            src: ReplayController = self.source
            state = "▶" if src.playing else "⏸"
            pos = (src.position_ns - src.start_ns) / 1e9
            dur = (src.end_ns - src.start_ns) / 1e9
            t.append(f" REPLAY {state} {src.speed:g}x {fmt_duration(pos)}/{fmt_duration(dur)} ", style="bold")
        else:
            t.append(" LIVE ", style="bold")
        if self.display_paused:
            t.append(" DISPLAY PAUSED ", style="bold reverse yellow")
        if self.stopping:
            t.append(" stopping the runner… ", style="yellow")
        if snap is not None:
            style = {"running": "green", "completed": "cyan", "failed": "bold red",
                     "interrupted": "yellow"}.get(snap.status, "dim")
            t.append(f" {snap.status} ", style=style)
            if snap.sweep_name:
                t.append(f" {snap.sweep_name} ")
            if snap.gpu_name:
                t.append(f" {snap.gpu_name}")
                t.append(" (simulated)" if snap.simulated else "")
        if t != getattr(self, "_last_status", None):
            self._last_status = t
            self._status_bar.update(t)

    # ------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in REPLAY_ACTIONS and not self.replay:
            return False
        return True

    def _live_running(self) -> bool:
        if self.replay:
            return False
        snap = self.source.snapshot()
        return snap.status in ("waiting", "running") and self.source.session is not None \
            and not self.source.done

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

        self.push_screen(ConfirmQuit(), answered)

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
        self.push_screen(HelpScreen(self.replay))

    def action_toggle_play(self) -> None:
        self.source.toggle()
        self.frame()

    def action_seek(self, delta_s: float) -> None:
        self.source.seek(delta_s)
        self.frame()

    def action_faster(self) -> None:
        self.source.faster()
        self._status()

    def action_slower(self) -> None:
        self.source.slower()
        self._status()

    def action_to_start(self) -> None:
        self.source.to_start()
        self.frame()

    def action_to_end(self) -> None:
        self.source.to_end()
        self.frame()

    def action_export(self) -> None:
        path = getattr(self.source, "path", None)
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
        written = []
        try:
            for fmt in EXPORT_FORMATS:
                out = Path(path).with_suffix(f".{fmt}")
                export(path, fmt, out_path=out)
                written.append(str(out))
        except Exception as e:  # shown, not raised: an export failure must not end the run
            self.call_from_thread(self._exported, f"export failed: {e}", "error")
            return
        self.call_from_thread(self._exported, f"exported {', '.join(written)}", "information")

    def _exported(self, message: str, severity: str) -> None:
        self.export_message = message
        self.notify(message, severity=severity, timeout=8)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Export tables", "Markdown and CSV beside the recording", self.action_export)
        yield SystemCommand("Pause display", "Freeze / resume the display (the run goes on)",
                            self.action_pause_display)
        yield SystemCommand("Help", "Keys and what the screen shows", self.action_help)
        if self.replay:
            yield SystemCommand("Play / pause replay", "Toggle replay", self.action_toggle_play)
            yield SystemCommand("Replay: go to start", "Seek to the first event", self.action_to_start)
            yield SystemCommand("Replay: go to end", "Seek to the last event", self.action_to_end)


def make_app(source: Any, clock: Callable[[], int] | None = None, path: str | None = None,
             frame_s: float = FRAME_S) -> WattscopeApp:
    """The app for a source: a ReplayController, a recording (replayed on ``clock``), a
    live session (with ``.state``, ``.stop()``, ``.done``), a LiveSource, or a bare
    RunState fed by someone else. ``clock`` freezes time for tests."""
    if isinstance(source, (ReplayController, LiveSource)):
        src = source
    elif isinstance(source, RunState) or hasattr(source, "state"):
        src = LiveSource(source, clock=clock or ev.now_ns, path=path)
    elif hasattr(source, "events"):
        src = ReplayController(source, clock=clock or ev.now_ns)
    else:
        raise TypeError(f"cannot show {type(source).__name__}: expected a session, RunState, "
                        "recording or ReplayController")
    return WattscopeApp(src, frame_s=frame_s)


def run_app(session: Any) -> str:
    """``wattscope run``: start the session, show it until the user quits, wait for the
    recording to be finalised, return the run's status."""
    if getattr(session, "status", "") == "starting":
        session.start()
    source = LiveSource(session, path=str(getattr(session, "output", "")) or None)
    make_app(source).run()
    if not source.done:
        # Quit after the sweep ended needs no wait; quit mid-sweep was confirmed and
        # already stopped it. Either way the recording must be closed before we return.
        source.stop()
    source.wait()
    return source.status


def run_replay_app(recording: Any, speed: float = 1.0) -> None:
    """``wattscope replay`` / ``wattscope demo``."""
    controller = ReplayController(recording, speed=speed)
    make_app(controller).run()
