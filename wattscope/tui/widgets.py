"""Widgets that draw one Snapshot each. They hold the last snapshot they were shown and
render from it; none of them reads the run state or the clock."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.console import RenderableType
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from wattscope import events as ev
from wattscope.metrics import percent_of_tdp, precision_label
from wattscope.render import (
    PHASE_LABEL,
    config_number,
    fmt_duration,
    fmt_percent,
    fmt_watts,
    phase_line,
    plain_text,
)
from wattscope.state import NO_PHASE, Snapshot, WarningLine

# One mark and one colour per phase: the mark keeps phases apart without colour
# (NO_COLOR), the colour makes them easy to see with it.
PHASE_MARK = {"idle": ".", "load": "l", "warmup": "w", "prefill": "P", "decode": "D", "cooldown": "c"}
PHASE_STYLE = {
    "idle": "grey62",
    "load": "blue",
    "warmup": "yellow",
    "prefill": "magenta",
    "decode": "green",
    "cooldown": "cyan",
}
_MARKS = [PHASE_MARK[p] for p in ev.PHASES]
_STYLES = [PHASE_STYLE[p] for p in ev.PHASES]
_BLOCKS = " ▁▂▃▄▅▆▇█"
GUTTER = 5
MIN_WINDOW_S = 10.0


def phase_legend(no_color: bool = False, phases: dict[str, str] | None = None) -> Text:
    """The graph's phase marks; ``phases`` (phase -> label) where a screen draws fewer or
    means another thing by one (a serving run's "load" is its offered load)."""
    t = Text()
    for p, label in (phases or {p: PHASE_LABEL[p] for p in ev.PHASES}).items():
        t.append(f"{PHASE_MARK[p]} ", style="bold" if no_color else f"bold {PHASE_STYLE[p]}")
        t.append(f"{label}  ")
    return t


class SnapshotView:
    """Mixin: keep the snapshot and redraw."""

    snap: Snapshot | None = None

    def show(self, snap: Snapshot) -> None:
        self.snap = snap
        self.refresh()  # type: ignore[attr-defined]


def _columns(t_s: np.ndarray, p: np.ndarray, phase: np.ndarray, window_s: float, width: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Mean watts and last phase per column; NaN / NO_PHASE where a column has no sample."""
    mean = np.full(width, np.nan)
    last_phase = np.full(width, NO_PHASE, dtype=np.int64)
    keep = t_s >= -window_s
    t_s, p, phase = t_s[keep], p[keep], phase[keep]
    if width <= 0 or not len(t_s):
        return mean, last_phase
    col = np.floor((t_s + window_s) / window_s * width).astype(np.int64)
    col = np.clip(col, 0, width - 1)
    counts = np.bincount(col, minlength=width)
    sums = np.bincount(col, weights=p, minlength=width)
    has = counts > 0
    mean[has] = sums[has] / counts[has]
    last_idx = np.searchsorted(col, np.arange(width), side="right") - 1
    last_phase[has] = phase[last_idx[has]]
    return mean, last_phase


_STYLE_OBJS = [Style(color="white")] + [Style.parse(st) for st in _STYLES]  # index: code + 1
# Under NO_COLOR Textual turns every colour into a grey of its luminance, and dark hues
# (magenta: prefill) end up grey on near-black. Without colour the marks alone tell the
# phases apart, so they are drawn in the text colour, the phases of work in bold.
_NO_COLOR_OBJS = [Style()] + [Style(bold=p in ("prefill", "decode")) for p in ev.PHASES]


def _styles(no_color: bool) -> list[Style]:
    return _NO_COLOR_OBJS if no_color else _STYLE_OBJS
_DIM = Style(dim=True)
_BOLD = Style(bold=True)


def _runs(text: str, style_idx: np.ndarray, styles: list[Style]) -> list[Segment]:
    """One segment per run of equal style: a graph line is a handful of segments, not
    one per cell (what keeps a 4 Hz redraw cheap)."""
    segs: list[Segment] = []
    if not len(text):
        return segs
    cuts = np.flatnonzero(np.diff(style_idx)) + 1
    bounds = [0, *cuts.tolist(), len(text)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        segs.append(Segment(text[a:b], styles[style_idx[a]]))
    return segs


# Tick steps of the time axis, seconds: the first that leaves room for its label.
TICK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)
TICK = "╵"


def time_axis(elapsed_s: float, window_s: float, width: int) -> str:
    """The axis under ``width`` columns showing run time ``elapsed_s - window_s`` to
    ``elapsed_s``: a tick and its time (``fmt_duration``) at each whole multiple of a
    step chosen so that labels never touch."""
    axis = [" "] * width
    if width <= 0 or window_s <= 0:
        return ""
    label_w = len(TICK + fmt_duration(elapsed_s)) + 1
    step = next((s for s in TICK_STEPS_S if s / window_s * width >= label_w), TICK_STEPS_S[-1])
    start = elapsed_s - window_s
    t = math.ceil(max(start, 0.0) / step) * step
    while t <= elapsed_s:
        col = int((t - start) / window_s * width)
        label = TICK + fmt_duration(t)
        if col + len(label) <= width:
            axis[col:col + len(label)] = label
        t += step
    return "".join(axis)


class PowerGraph(SnapshotView, Widget):
    """Power of each GPU over the last window, coloured by phase, with a row of phase
    marks and a time axis beneath and the current value in the heading; a model split
    over several GPUs gets a first line with their total against the summed TDP.

    The scale is fixed at 0..TDP (so a low-power INT8 run looks low) unless
    ``auto_zoom`` spans it from the lowest to the highest power shown. ``whole``, a
    snapshot whose window holds the whole run, is drawn instead of the frames' while set
    (a replay's overview)."""

    DEFAULT_CSS = "PowerGraph { height: 1fr; }"

    auto_zoom = False
    whole: Snapshot | None = None

    def show(self, snap: Snapshot) -> None:
        self.snap = snap
        self._cache: tuple[Any, list[Strip]] | None = None
        self.refresh()

    def redraw(self) -> None:
        """Draw again after a change of scale or of window."""
        self._cache = None
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        key = (width, height)
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] != key:
            cache = self._cache = (key, self._lines(width, height))
        lines = cache[1]
        line = lines[y] if y < len(lines) else Strip.blank(width)
        return line.crop_extend(0, width, None).apply_style(self.rich_style)

    def _lines(self, width: int, height: int) -> list[Strip]:
        snap = self.whole or self.snap
        if snap is None or not snap.gpus:
            return [Strip([Segment("waiting for samples…", _DIM)])]
        out: list[Strip] = []
        if len(snap.gpus) > 1:
            out.append(self._total_line(snap))
        per = max(4, (height - len(out)) // len(snap.gpus))
        for g in snap.gpus:
            out.extend(self._gpu_lines(snap, g, width, per))
        return out[:height]

    @staticmethod
    def _total_line(snap: Snapshot) -> Strip:
        known = [g.latest_w for g in snap.gpus if g.latest_w is not None]
        total = sum(known) if len(known) == len(snap.gpus) else None
        tdp = (f"  {fmt_percent(percent_of_tdp(total, snap.tdp_w))} of {fmt_watts(snap.tdp_w)} TDP"
               if snap.tdp_w else "  TDP unknown")
        return Strip([Segment(f"{len(snap.gpus)} GPUs {fmt_watts(total)}", _BOLD), Segment(tdp)])

    def _gpu_lines(self, snap: Snapshot, g, width: int, height: int) -> list[Strip]:
        tdp_w = g.tdp_w or (max(float(np.nanmax(g.power_w)), 1.0) if len(g.power_w) else 1.0)
        tdp = f"  {fmt_percent(g.pct_tdp)} of {fmt_watts(tdp_w)} TDP" if g.tdp_w else "  TDP unknown"
        mode = "  whole run" if self.whole is not None else ""
        lines = [Strip([Segment(f"GPU{g.index} {fmt_watts(g.latest_w)}", _BOLD), Segment(tdp + mode)])]
        rows = max(1, height - 3)
        plot_w = max(1, width - GUTTER)
        # A young run is shown zoomed in, so a short sweep is not a sliver at the edge.
        window_s = min(snap.window_s, max(MIN_WINDOW_S, snap.elapsed_s))
        mean, phases = _columns(g.t_s, g.power_w, g.phase, window_s, plot_w)
        empty = np.isnan(mean)
        low, high = 0.0, tdp_w
        if self.auto_zoom and not empty.all():
            # Whole watts around what is shown, never a zero-height span.
            low = math.floor(float(np.nanmin(mean)))
            high = max(math.ceil(float(np.nanmax(mean))), low + 1)
        level = np.where(empty, 0.0, np.clip((np.nan_to_num(mean) - low) / (high - low), 0, 1) * rows * 8)
        style_idx = (phases + 1).astype(np.int64)
        styles = _styles(self.app.no_color)
        for r in range(rows):
            k = rows - 1 - r  # rows from the bottom
            label = f"{high:.0f}W" if r == 0 else (f"{low:.0f}W" if k == 0 else "")
            fill = np.clip(np.rint(level - 8 * k), 0, 8).astype(np.int64)
            if k == 0:
                fill[(fill == 0) & ~empty] = 1  # a drawn sample is never invisible
            fill[empty] = 0
            text = "".join(_BLOCKS[f] for f in fill)
            lines.append(Strip([Segment(f"{label:>{GUTTER - 1}}│", _DIM), *_runs(text, style_idx, styles)]))
        marks = "".join(_MARKS[c] if c >= 0 else " " for c in phases)
        lines.append(Strip([Segment(f"{'':>{GUTTER - 1}}└", _DIM), *_runs(marks, style_idx, styles)]))
        axis = time_axis(snap.elapsed_s, window_s, plot_w)
        lines.append(Strip([Segment(" " * GUTTER + axis, _DIM)]))
        return lines


def _gauge(pct: float | None, width: int) -> Text:
    frac = 0.0 if pct is None or not math.isfinite(pct) else min(1.0, max(0.0, pct / 100))
    fill = int(round(frac * width))
    style = "red" if frac > 0.9 else ("yellow" if frac > 0.6 else "green")
    t = Text("█" * fill, style=style)
    t.append("░" * (width - fill), style="dim")
    return t


class PhasePanel(SnapshotView, Widget):
    """Where the sweep is: phase, configuration, repeat, progress, power."""

    def render(self) -> RenderableType:
        snap = self.snap
        if snap is None or snap.status == "waiting":
            return Text("waiting for the run to start…", style="dim")
        lines = []
        t = Text("Phase   ", style="dim")
        if snap.phase:
            colour = "" if self.app.no_color else PHASE_STYLE.get(snap.phase, "")
            t.append(f"{PHASE_MARK.get(snap.phase, '?')} ", style=f"bold {colour}")
        t.append(phase_line(snap), style="bold")
        t.append(f"  {snap.phase_elapsed_s:.1f} s")
        lines.append(t)
        t = Text("Config  ", style="dim")
        t.append(f"{config_number(snap)}/{snap.configs_total} ")
        c = snap.config
        if c is None:
            t.append("-")
        else:
            t.append_text(plain_text(f"{c.label} b{c.batch} {precision_label(c.precision)}", style="bold"))
        lines.append(t)
        t = Text("Weights ", style="dim")
        t.append("-" if c is None else ("synthetic" if c.synthetic else "real"))
        t.append(f" · {'sim' if snap.simulated else 'real'} GPU")
        lines.append(t)
        t = Text("Time    ", style="dim")
        t.append(f"{fmt_duration(snap.elapsed_s)}  ETA {fmt_duration(snap.eta_s)}")
        lines.append(t)
        g = snap.gpu
        if g is not None:
            t = Text("Power   ", style="dim")
            t.append(fmt_watts(g.latest_w), style="bold")
            t.append(f"  phase avg {fmt_watts(g.phase_avg_w)}", style="dim")
            lines.append(t)
            bar_w = max(4, self.size.width - 13)
            t = Text("%TDP    ", style="dim")
            t.append_text(_gauge(g.pct_tdp, bar_w))
            t.append(f" {fmt_percent(g.pct_tdp):>4}")
            lines.append(t)
        return Text("\n").join(lines)


class SensorLine(SnapshotView, Widget):
    """Is the power trustworthy: which signal, how fresh, how fast the sampler runs."""

    DEFAULT_CSS = "SensorLine { height: 1; }"

    def show(self, snap: Snapshot) -> None:
        old = self.snap
        if old is not None and (old.signal, old.refresh_ms, old.sampler) == (snap.signal, snap.refresh_ms, snap.sampler):
            return
        self.snap = snap
        self.refresh()

    def render(self) -> RenderableType:
        snap = self.snap
        if snap is None:
            return Text("")
        t = plain_text(snap.signal)
        t.no_wrap, t.overflow = True, "ellipsis"
        refresh = f"{snap.refresh_ms:.0f} ms" if snap.refresh_ms is not None else "? ms"
        t.append(f" (refresh {refresh})")
        s = snap.sampler
        if s is None:
            t.append(" · sampler: no stats yet", style="dim")
        else:
            t.append(f" · {s.achieved_hz:.0f}/{s.target_hz:.0f} Hz")
            distinct = "?" if s.distinct_per_s is None else f"{s.distinct_per_s:.1f}"
            t.append(f" · {distinct} distinct/s")
            t.append(f" · {s.drops} drops · CPU {s.cpu_pct:.0f}%")
        return t


def warning_line(w: WarningLine) -> Text:
    t = Text("! ", style="bold yellow", no_wrap=True, overflow="ellipsis")
    t.append_text(plain_text(f"[{w.source}] ", style="dim"))
    t.append_text(plain_text(w.message))
    return t


class WarningLog(SnapshotView, Widget):
    """The latest warnings, newest last (all of them: the warnings screen)."""

    def show(self, snap: Snapshot) -> None:
        if self.snap is not None and snap.warnings_total == self.snap.warnings_total:
            return
        self.snap = snap
        self.refresh()

    def render(self) -> RenderableType:
        snap = self.snap
        if snap is None or not snap.warnings:
            return Text("no warnings", style="dim")
        lines = []
        for w in list(snap.warnings)[-max(1, self.size.height):]:
            lines.append(warning_line(w))
        return Text("\n", no_wrap=True, overflow="ellipsis").join(lines)
