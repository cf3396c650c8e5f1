"""Show a run without the TUI: a rich Live panel on a terminal, plain progress lines
otherwise (one per phase change, result and warning, flushed, so CI logs show
progress), and the final results table at the end. Works from a live session
(``source.LiveSource``) or a replay (``replay.ReplayController``, fed in fast mode).
Numbers and the results table come from ``wattscope.render``, as in the TUI and the
exports.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from wattscope import events as ev
from wattscope.metrics import CV_LIMIT, RATIOS, Ratio, common_decode_steps, decode_run, precision_label
from wattscope.render import (
    PHASE_LABEL,
    config_line,
    config_number,
    fmt_duration,
    fmt_marked,
    fmt_percent,
    fmt_ratio,
    fmt_watts,
    phase_line,
    plain_text,
    results_table,
    snapshot_markdown,
    table_note,
)
from wattscope.safe_text import printable
from wattscope.source import LiveSource, ReplayControls, RunSource
from wattscope.state import ENDED, ResultRow, RunState, Snapshot

POLL_S = 0.5  # ~2 Hz


def _result_line(row: ResultRow) -> str:
    """``prefill 4.736 J (5.13x), decode 135.724 J/32 tok (3.18x), 15.79 tok/s (0.15x)``"""
    run = decode_run(common_decode_steps([row.figures.get("decode_steps")]))

    def part(ratio: Ratio, unit: str) -> str:
        value = fmt_marked(ratio.figure, row.figures.get(ratio.figure), ratio.figure in row.flagged)
        return f"{value} {unit} ({fmt_ratio(row.ratios.get(ratio.name))})"

    prefill, decode, speed = RATIOS
    return f"prefill {part(prefill, 'J')}, decode {part(decode, f'J/{run}')}, {part(speed, 'tok/s')}"


# --------------------------------------------------------------------------- plain


class ProgressPrinter:
    """Plain lines for logs: prints what is new in each snapshot it is given."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._meta_done = False
        self._phase_seq = 0
        self._results: set[str] = set()
        self._warnings = 0
        self._ended = False

    def _line(self, snap: Snapshot, t_ns: int, text: str) -> None:
        rel = (t_ns - snap.started_ns) / 1e9 if snap.started_ns is not None else 0.0
        # Names, reasons and warnings come from the run: one line each, no control sequences.
        self.out.write(f"[{rel:8.1f}s] {printable(text)}\n")

    def update(self, snap: Snapshot) -> None:
        if snap.status == "waiting":
            return
        if not self._meta_done:
            self._meta_done = True
            sim = " (simulated)" if snap.simulated else ""
            tdp = f"TDP {fmt_watts(snap.tdp_w)}" if snap.tdp_w else "TDP unknown"
            weights = ", synthetic weights" if snap.synthetic else ""
            self._line(snap, snap.started_ns or 0, f"run started: {snap.gpu_name or 'GPU'}{sim}, {tdp}{weights}")
        for mark in snap.timeline:
            if mark.seq <= self._phase_seq:
                continue
            self._phase_seq = mark.seq
            rep = f" r{mark.repeat}" if mark.repeat is not None else ""
            where = f" {mark.config_id}" if mark.config_id else ""
            self._line(snap, mark.t_ns, f"phase {PHASE_LABEL.get(mark.phase, mark.phase)}{rep}{where}")
        for row in snap.results:
            if row.config_id in self._results:
                continue
            self._results.add(row.config_id)
            name = f"{row.model} b{row.batch} {precision_label(row.precision)}"
            if not row.ok:
                self._line(snap, row.t_ns or snap.now_ns, f"FAILED {name}: {row.reason}")
                continue
            flag = f" [CV > {CV_LIMIT:.0%}: {', '.join(sorted(row.flagged))}]" if row.flagged else ""
            self._line(snap, row.t_ns, f"result {name}: {_result_line(row)}{flag}")
        for w in snap.warnings:
            if w.seq > self._warnings:
                self._warnings = w.seq
                self._line(snap, w.t_ns, f"warning [{w.source}] {w.message}")
        if snap.status in ENDED and not self._ended:
            self._ended = True
            why = f": {snap.error}" if snap.error else ""
            self._line(snap, snap.now_ns, f"run {snap.status} after {fmt_duration(snap.elapsed_s)}{why}")
        self.out.flush()


# --------------------------------------------------------------------------- live


def live_panel(snap: Snapshot, width: int = 100) -> RenderableType:
    """What the terminal shows while a run goes on (rich only, no Textual)."""
    lines: list[RenderableType] = []
    head = plain_text(f"wattscope  {snap.gpu_name or 'GPU'}", style="bold")
    if snap.simulated:
        head.append("  (simulated)", style="magenta")
    head.append(f"  {snap.status}  {fmt_duration(snap.elapsed_s)}  ETA {fmt_duration(snap.eta_s)}")
    lines.append(head)
    for g in snap.gpus:
        bar_w = 30
        frac = 0.0 if g.pct_tdp is None else min(1.0, max(0.0, g.pct_tdp / 100))
        fill = int(round(frac * bar_w))
        t = Text(f"GPU{g.index} {fmt_watts(g.latest_w):>6} ")
        t.append("█" * fill, style="green")
        t.append("░" * (bar_w - fill), style="dim")
        t.append(f" {fmt_percent(g.pct_tdp)} TDP   phase avg {fmt_watts(g.phase_avg_w)}")
        lines.append(t)
    lines.append(Text(
        f"config {config_number(snap)}/{snap.configs_total}: {config_line(snap)}   phase {phase_line(snap)}"
        f" ({snap.phase_elapsed_s:.1f} s)"
    ))
    if snap.error:
        lines.append(plain_text(f"error: {snap.error}", style="bold red"))
    lines.append(results_table(snap, width))
    return Group(*lines)


def _final(snap: Snapshot, out: IO[str], tty: bool) -> None:
    if tty:
        console = Console(file=out)
        console.print(results_table(snap, console.width))
        console.print(table_note(snap), style="dim")
    else:
        out.write(snapshot_markdown(snap) + "\n" + table_note(snap) + "\n")
    out.flush()


def run_headless(source: RunSource, out: IO[str] | None = None, tty: bool | None = None,
                 poll_s: float = POLL_S) -> Snapshot:
    """Show ``source`` until its run ends; return the last snapshot. A replay (a source
    with controls) is played at once; a live run is polled."""
    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    if source.controls is not None:
        snap = _replay(source.controls, out, tty)
    else:
        snap = _live(source, out, tty, poll_s)
    _final(snap, out, tty)
    return snap


_PROGRESS_KINDS = (ev.RunStarted, ev.PhaseStarted, ev.ConfigResult, ev.ConfigFinished, ev.RunWarning, ev.RunEnded)


def _replay(source: ReplayControls, out: IO[str], tty: bool) -> Snapshot:
    if tty:
        return source.run_fast()
    printer = ProgressPrinter(out)

    def on_event(e: ev.Event, state: RunState) -> None:
        if isinstance(e, _PROGRESS_KINDS):
            printer.update(state.snapshot(e.t_ns))

    snap = source.run_fast(on_event)
    printer.update(snap)
    return snap


def _live(source: RunSource, out: IO[str], tty: bool, poll_s: float) -> Snapshot:
    printer = None if tty else ProgressPrinter(out)
    live = None
    if tty:
        from rich.live import Live

        console = Console(file=out)
        live = Live(console=console, auto_refresh=False, transient=False)
        live.start()
    try:
        while True:
            try:
                snap = source.snapshot()
                if live is not None:
                    live.update(live_panel(snap, console.width), refresh=True)
                elif printer is not None:
                    printer.update(snap)
                if snap.ended or source.done:
                    return source.snapshot()
                time.sleep(poll_s)
            except KeyboardInterrupt:
                # Ctrl-C stops the runner cleanly; the session finalises the recording.
                source.stop()
    finally:
        if live is not None:
            live.stop()
        elif printer is not None:
            printer.update(source.snapshot())


# --------------------------------------------------------------------------- cli


def run_live(session: Any, out: IO[str] | None = None) -> str:
    """``wattscope run --headless``: start the session, show it, return its status. A
    start that fails raises (nothing is written); after it, the run never outlives this display (``session.watched``): a closed output, a failure
    of the printer, SIGTERM or SIGHUP stop it, and its recording is final on return."""
    from wattscope.session import watched

    source = LiveSource(session)
    with watched(session):
        session.start()
        run_headless(source, out)
    return source.status


def run_replay(recording: Any, out: IO[str] | None = None) -> Snapshot:
    """``wattscope replay --headless``: the recorded run's progress and final table."""
    from wattscope.replay import ReplayController

    return run_headless(ReplayController(recording), out)
