"""Show a run without the TUI: a rich Live panel on a terminal, plain progress lines
otherwise (one per phase change, result and warning, flushed, so CI logs show
progress), and the final ratio table at the end. Works from a live session
(``source.LiveSource``) or a replay (``replay.ReplayController``, fed in fast mode).

The formatting helpers here (figures, ratios, the ratio table) are shared with the TUI.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any, Iterable

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from wattscope import events as ev
from wattscope.source import LiveSource, ReplayControls, RunSource
from wattscope.state import CV_LIMIT, ENDED, ResultRow, RunState, Snapshot

POLL_S = 0.5  # ~2 Hz
CV_MARK = "*"
PRECISION_LABEL = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8", "nf4": "NF4"}
PHASE_LABEL = {
    "idle": "idle",
    "load": "load",
    "warmup": "warm-up",
    "prefill": "prefill",
    "decode": "decode",
    "cooldown": "cool-down",
}


# --------------------------------------------------------------------------- format


def fmt_num(v: float | None, digits: int) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def fmt_watts(v: float | None) -> str:
    return "--- W" if v is None else f"{v:.0f} W"


def fmt_pct(v: float | None) -> str:
    return "--%" if v is None else f"{v:.0f}%"


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def precision_label(p: str) -> str:
    return PRECISION_LABEL.get(p, p.upper())


def config_line(snap: Snapshot) -> str:
    c = snap.config
    if c is None:
        return "no configuration yet"
    kind = "synthetic" if c.synthetic else "real"
    return f"{c.label} b{c.batch} {precision_label(c.precision)} ({kind})"


def config_number(snap: Snapshot) -> int:
    """1-based number of the configuration shown (the one running, or the last)."""
    return snap.config.index + 1 if snap.config is not None else 0


def phase_line(snap: Snapshot) -> str:
    phase = PHASE_LABEL.get(snap.phase or "", snap.phase or "-")
    rep = ""
    if snap.repeat is not None and snap.config is not None:
        rep = f" r{snap.repeat}/{snap.config.repeats}"
    return f"{phase}{rep}"


def _fig(row: ResultRow, name: str, digits: int) -> str:
    mark = CV_MARK if name in row.flagged else ""
    return fmt_num(row.figures.get(name), digits) + mark


COLUMNS = (
    "Model", "Batch", "Precision", "Prefill J/call", "Decode J/32 tok", "Decode tok/s",
    "Prefill ratio", "Decode ratio", "Speed ratio",
)
COLUMNS_TDP = ("Prefill %TDP", "Decode %TDP")


def row_cells(row: ResultRow, with_tdp: bool = False) -> list[str]:
    head = [row.model, str(row.batch), precision_label(row.precision)]
    if not row.ok:
        # The reason goes under the table (table_note): in a cell it would widen a column.
        return head + ["failed"] + ["-"] * (7 if with_tdp else 5)
    cells = head + [
        _fig(row, "prefill_energy_j", 3),
        _fig(row, "decode_energy_j", 3),
        _fig(row, "decode_tok_s", 2),
        fmt_ratio(row.ratios.prefill_energy),
        fmt_ratio(row.ratios.decode_energy),
        fmt_ratio(row.ratios.decode_speed),
    ]
    if with_tdp:
        cells += [fmt_pct(row.prefill_pct_tdp), fmt_pct(row.decode_pct_tdp)]
    return cells


def ratio_table(snap: Snapshot, width: int = 80, compact: bool = False) -> Table:
    """The seed's table with ratios to FP16, filling in as results arrive. Failed rows
    give their reason; figures whose repeats vary by more than 3 % carry a mark."""
    compact = compact or width < 125
    with_tdp = width >= (78 if compact else 145)
    names = COLUMNS + (COLUMNS_TDP if with_tdp else ())
    if compact:
        names = ("Model", "B", "Prec", "Pre J", "Dec J", "tok/s", "Pre×", "Dec×", "Spd×") + (
            ("Pre%", "Dec%") if with_tdp else ()
        )
    table = Table(box=None, pad_edge=False, padding=(0, 1), expand=False, show_edge=False)
    for i, name in enumerate(names):
        table.add_column(name, justify="left" if i in (0, 2) else "right", no_wrap=True,
                         overflow="ellipsis", style="bold" if i == 0 else None)
    for row in snap.results:
        cells = row_cells(row, with_tdp)
        style = "red" if not row.ok else ("yellow" if row.flagged else None)
        table.add_row(*cells, style=style)
    return table


def failure_lines(rows: Iterable[ResultRow]) -> list[str]:
    return [
        f"failed {r.model} b{r.batch} {precision_label(r.precision)}: {r.reason}" for r in rows if not r.ok
    ]


def table_note(snap: Snapshot) -> str:
    notes = ["ratios vs FP16 of the same model and batch"]
    if any(r.flagged for r in snap.results):
        notes.append(f"{CV_MARK} CV > {CV_LIMIT:.0%} across repeats")
    return "\n".join(["; ".join(notes), *failure_lines(snap.results)])


def markdown_table(rows: Iterable[ResultRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS + COLUMNS_TDP) + " |", "|" + "---|" * len(COLUMNS + COLUMNS_TDP)]
    for row in rows:
        lines.append("| " + " | ".join(row_cells(row, with_tdp=True)) + " |")
    return "\n".join(lines)


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
        self.out.write(f"[{rel:8.1f}s] {text}\n")

    def update(self, snap: Snapshot) -> None:
        if snap.status == "waiting":
            return
        if not self._meta_done:
            self._meta_done = True
            sim = " (simulated)" if snap.simulated else ""
            tdp = f"TDP {snap.tdp_w:.0f} W" if snap.tdp_w else "TDP unknown"
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
            r = row.ratios
            flag = f" [CV > {CV_LIMIT:.0%}: {', '.join(sorted(row.flagged))}]" if row.flagged else ""
            self._line(
                snap, row.t_ns,
                f"result {name}: prefill {_fig(row, 'prefill_energy_j', 3)} J ({fmt_ratio(r.prefill_energy)}), "
                f"decode {_fig(row, 'decode_energy_j', 3)} J/32 tok ({fmt_ratio(r.decode_energy)}), "
                f"{_fig(row, 'decode_tok_s', 2)} tok/s ({fmt_ratio(r.decode_speed)}){flag}",
            )
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
    lines = []
    head = Text(f"wattscope  {snap.gpu_name or 'GPU'}", style="bold")
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
        t.append(f" {fmt_pct(g.pct_tdp)} TDP   phase avg {fmt_watts(g.phase_avg_w)}")
        lines.append(t)
    lines.append(Text(
        f"config {config_number(snap)}/{snap.configs_total}: {config_line(snap)}   phase {phase_line(snap)}"
        f" ({snap.phase_elapsed_s:.1f} s)"
    ))
    if snap.error:
        lines.append(Text(f"error: {snap.error}", style="bold red"))
    lines.append(ratio_table(snap, width))
    return Group(*lines)


def _final(snap: Snapshot, out: IO[str], tty: bool) -> None:
    if tty:
        console = Console(file=out)
        console.print(ratio_table(snap, console.width))
        console.print(table_note(snap), style="dim")
    else:
        out.write(markdown_table(snap.results) + "\n" + table_note(snap) + "\n")
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
                else:
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
    """``wattscope run --headless``: start the session, show it, return its status."""
    source = LiveSource(session)
    if session is not None and getattr(session, "status", "") == "starting":
        session.start()
    run_headless(source, out)
    source.wait()
    return source.status


def run_replay(recording: Any, out: IO[str] | None = None) -> Snapshot:
    """``wattscope replay --headless``: the recorded run's progress and final table."""
    from wattscope.replay import ReplayController

    return run_headless(ReplayController(recording), out)
