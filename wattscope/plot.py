"""Figures for papers and reports (``wattscope plot``), drawn with matplotlib.

Four kinds, each drawn only from what the analysis and the recording hold, never
recomputed here:

- ``ratios``: each ratio to FP16 (``Analysis.phases``: the value and, where the source has
  one, its 95% interval as whiskers) per quantised row, on a log axis with the 1.0 line;
  several sources side by side, and a source without intervals says so in the legend;
- ``power``: average power per phase and precision: the range over configurations
  (``Analysis.power``) as a bar, each configuration's value (``Analysis.phases``) as a
  point, and % of TDP on the right-hand axis where the sources share one TDP;
- ``timeline``: a recording's instant power per GPU over time, the phases as coloured
  bands (``wattscope.timeline``), configurations labelled, the TDP as a dashed line;
  ``config`` narrows it to one configuration. A serving recording's bands are its idle and
  load phases (``ServePhase``), labelled by precision and offered rate;
- ``serving``: serving recordings' J per prefill and per decode token and idle share
  (``serve.analysis.rates_frame``) against the offered or achieved rate, 95% intervals as
  whiskers, one series per source and precision; a poor fit is not drawn but named in a
  note under the panels.

``ratios`` and ``power`` draw sweeps, ``serving`` serve-bench recordings; the wrong kind
for a source is refused naming both.

matplotlib is an optional extra (``pip install 'wattscope[plot]'``) imported only when a
figure is made, with the non-interactive Agg canvas, so plotting works without a display.
Every drawn artist that carries numbers has a ``gid`` naming what it shows (the tests
read the numbers back from them).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wattscope import timeline as tl
from wattscope.analysis import Analysis, Source, analyze, open_sources
from wattscope.config import RunConfig
from wattscope.errors import WattscopeError
from wattscope.events import ServePhase
from wattscope.export import write_atomic
from wattscope.metrics import RATIOS, is_baseline, precision_label, precision_rank, run_meta
from wattscope.render import PHASE_LABEL
from wattscope.serve.analysis import analyse, is_serving, rates_frame

# matplotlib.figure.Figure: matplotlib is imported only where a figure is drawn, so the
# annotations name it by this alias.
Figure = Any

KINDS = ("timeline", "ratios", "power", "serving")
SWEEP_KINDS = ("ratios", "power")  # drawn from the sweep tables; "serving" from serve-bench runs
RATE_AXES = ("offered", "achieved")
# What the serving figure draws, panel by panel: rates_frame's column and the panel's title.
SERVING_PANELS = (
    ("prefill_j_per_token", "J per prefill token"),
    ("decode_j_per_token", "J per decode token"),
    ("idle_share", "idle share of the measured energy"),
)
FORMATS = ("png", "svg", "pdf")
INSTALL = "pip install 'wattscope[plot]'"
# The TUI's phase colours (tui/widgets.py PHASE_STYLE), as matplotlib names.
PHASE_COLOR = {
    "idle": "0.6", "load": "tab:blue", "warmup": "gold", "prefill": "tab:pink", "decode": "tab:green",
    "cooldown": "tab:cyan",
}
_DPI = 110


class PlotError(WattscopeError, ValueError):
    """A figure that cannot be made, phrased for the user: what was asked, what is allowed."""


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError(f"plotting needs matplotlib, which is not installed; install it with: {INSTALL}") from None


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def row_label(row: pd.Series | dict[str, Any]) -> str:
    """How a figure names a row of the phases table: ``Qwen2-1.5B b1 INT8`` (engine added
    when it is not the eager one)."""
    engine = "" if row["engine"] == "eager" else f" ({row['engine']})"
    return f"{row['model']} b{int(row['batch'])} {row['precision']}{engine}"


def _interval_note(df: pd.DataFrame) -> str:
    cols = [f"{r.name}_{end}" for r in RATIOS for end in ("low", "high")]
    return "95% intervals" if df[cols].notna().any(axis=None) else "no intervals: point values"


# --------------------------------------------------------------------------- ratios


def ratios_figure(a: Analysis) -> Figure:
    """Each ratio to FP16 per quantised row and source (see the module docstring)."""
    df = a.phases
    rows = df[df["ok"] & ~df["precision"].map(is_baseline).astype(bool)] if not df.empty else df
    rows = rows[rows[[r.name for r in RATIOS]].notna().any(axis=1)] if not rows.empty else rows
    if rows.empty:
        raise PlotError("no ratios to draw: no quantised row has a usable FP16 baseline in the source(s)")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    labels = list(dict.fromkeys(row_label(r) for _, r in rows.iterrows()))
    pos = {label: i for i, label in enumerate(labels)}
    sources = list(dict.fromkeys(rows["source"]))
    step = 0.7 / len(sources)
    fig = _new_figure(13, 1.6 + 0.32 * len(labels) * max(1, len(sources) * 0.6))
    axes = fig.subplots(1, len(RATIOS), sharey=True)
    handles: dict[str, Any] = {}  # the legend's entry of each source, in source order
    for ax, ratio in zip(axes, RATIOS):
        ax.axvline(1.0, color="0.3", linewidth=1, gid="ratio-baseline")
        for j, source in enumerate(sources):
            g = rows[(rows["source"] == source) & rows[ratio.name].notna()]
            offset = (j - (len(sources) - 1) / 2) * step
            y = np.array([pos[row_label(r)] + offset for _, r in g.iterrows()], dtype=float)
            value = g[ratio.name].to_numpy(float)
            low, high = g[f"{ratio.name}_low"].to_numpy(float), g[f"{ratio.name}_high"].to_numpy(float)
            ci = ~np.isnan(low) & ~np.isnan(high)
            color = f"C{j}"
            label = f"{source} ({_interval_note(df[df['source'] == source])})"
            if ci.any():
                bars = ax.errorbar(value[ci], y[ci], xerr=[value[ci] - low[ci], high[ci] - value[ci]], fmt="o",
                                   color=color, capsize=3, markersize=5)
                bars.lines[0].set_gid(f"ratio|{source}|{ratio.name}|ci")
                bars.lines[2][0].set_gid(f"whiskers|{source}|{ratio.name}")
                handles.setdefault(label, bars)
            if (~ci).any():
                (points,) = ax.plot(value[~ci], y[~ci], "D", color=color, markersize=5, linestyle="none",
                                    markerfacecolor="white" if ci.any() else color)
                points.set_gid(f"ratio|{source}|{ratio.name}|point")
                handles.setdefault(label, points)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=2))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(ratio.title)
        ax.grid(axis="x", color="0.9")
        ax.set_xlabel("ratio to FP16 (log scale)")
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)
    ordered = sorted(handles.items(), key=lambda kv: sources.index(kv[0].rsplit(" (", 1)[0]))
    axes[0].legend([h for _, h in ordered], [k for k, _ in ordered], loc="lower left", bbox_to_anchor=(0, 1.06),
                   fontsize=8, frameon=False)
    fig.suptitle("Ratios to FP16 of the same model and batch (energy above 1 = more energy; speed below 1 = slower)",
                 fontsize=10, x=0.5, y=1.02)
    return fig


# ---------------------------------------------------------------------------- power


def power_figure(a: Analysis) -> Figure:
    """Average power per phase and precision (see the module docstring)."""
    power, phases = a.power, a.phases
    if power.empty:
        raise PlotError("no average power to draw: the source(s) hold no power figures")
    precisions = sorted(dict.fromkeys(power["precision"]), key=precision_rank)
    sources = list(dict.fromkeys(power["source"]))
    tdps = power["tdp_w"].dropna().unique()
    shared_tdp = float(tdps[0]) if len(tdps) == 1 and power["tdp_w"].notna().all() else None
    step = 0.6 / len(sources)
    fig = _new_figure(10, 4.5)
    axes = fig.subplots(1, 2, sharey=True)
    top = 0.0
    for ax, phase in zip(axes, ("prefill", "decode")):
        for j, source in enumerate(sources):
            p = power[power["source"] == source]
            offset = (j - (len(sources) - 1) / 2) * step
            x = np.array([precisions.index(v) + offset for v in p["precision"]], dtype=float)
            lo, hi = p[f"{phase}_power_min_w"].to_numpy(float), p[f"{phase}_power_max_w"].to_numpy(float)
            tdp = p["tdp_w"].dropna().unique()
            label = source if shared_tdp is not None or len(tdp) != 1 else f"{source} (TDP {tdp[0]:.0f} W)"
            ax.vlines(x, lo, hi, color=f"C{j}", linewidth=8, alpha=0.35, label=f"{label}: range",
                      gid=f"power-range|{source}|{phase}")
            rows = phases[(phases["source"] == source) & phases["ok"] & phases[f"{phase}_power_w"].notna()]
            px = np.array([precisions.index(v) + offset for v in rows["precision"]], dtype=float)
            (pts,) = ax.plot(px, rows[f"{phase}_power_w"].to_numpy(float), "o", color=f"C{j}", markersize=4,
                             linestyle="none", label=f"{label}: configurations")
            pts.set_gid(f"power-rows|{source}|{phase}")
            top = max(top, float(np.nanmax(hi, initial=0)), float(np.nanmax(pts.get_ydata(), initial=0)))
        ax.set_xticks(range(len(precisions)), [precision_label(p) for p in precisions])
        ax.set_title(f"{PHASE_LABEL[phase]} average power")
        ax.grid(axis="y", color="0.9")
    axes[0].set_ylabel("W (median over a configuration's windows)")
    axes[0].set_ylim(0, top * 1.1 or 1)
    if shared_tdp is not None:
        tdp_w = shared_tdp
        sec = axes[1].secondary_yaxis("right", functions=(lambda w: w / tdp_w * 100, lambda pct: pct * tdp_w / 100))
        sec.set_ylabel(f"% of {tdp_w:.0f} W TDP")
    axes[0].legend(fontsize=8, frameon=False, loc="upper center")
    return fig


# ------------------------------------------------------------------------- timeline


def _config_label(c: tl.ConfigSpan, group: bool) -> str:
    model = RunConfig("", c.model, 1, "").model_label
    engine = "" if c.engine == "eager" else f" ({c.engine})"
    return f"{model} b{c.batch}{engine}" if group else f"{model} b{c.batch} {precision_label(c.precision)}{engine}"


def _labelled_spans(t: tl.Timeline, config: str | None) -> list[tuple[int, int, str]]:
    """(start, end, label) of what the figure names: the chosen configuration, or each
    group of rows measured together (each configuration where there are no groups)."""
    if config is not None:
        c = next(c for c in t.configs if c.config_id == config)
        return [(c.start_ns, c.end_ns, _config_label(c, False))]
    out: dict[str, tuple[int, int, str]] = {}
    for c in t.configs:
        key = c.group or c.config_id
        s, e, label = out.get(key, (c.start_ns, c.end_ns, _config_label(c, c.group is not None)))
        out[key] = (min(s, c.start_ns), max(e, c.end_ns), label)
    return list(out.values())


def _serving_spans(rec: Any) -> list[tuple[tl.Span, str]]:
    """A serving run's idle and load phases (``ServePhase``), each with its label:
    ``FP16 idle``, ``FP16 6/s`` (precision and offered rate)."""
    out = []
    for e in rec.events(samples=False):
        if isinstance(e, ServePhase):
            what = "idle" if e.phase == "idle" else f"{e.rate_rps:g}/s"
            out.append((tl.Span(e.start_ns, e.end_ns, e.phase, None), f"{precision_label(e.precision)} {what}"))
    return sorted(out, key=lambda sl: sl[0].start_ns)


def timeline_figure(src: Source, config: str | None = None) -> Figure:
    """Power per GPU over time with phase bands and configuration labels; a serving
    recording's bands are its idle and load phases, labelled by precision and rate."""
    if src.kind != "recording":
        raise PlotError(f"{src.label}: an imported table has no samples to draw over time; give a recording")
    rec = src.data
    t = tl.of_recording(rec)
    run = run_meta(rec.meta)
    lo, hi = t.start_ns, t.end_ns
    serving = _serving_spans(rec) if is_serving(rec.meta) else None
    if serving is not None and config is not None:
        raise PlotError(f"{src.label}: a serving recording (serve-bench) has no configurations; "
                        "--config narrows a sweep's timeline")
    if config is not None:
        ids = [c.config_id for c in t.configs]
        if config not in ids:
            raise PlotError(f"{src.label}: no configuration {config!r}; allowed: {', '.join(ids)}")
        c = next(c for c in t.configs if c.config_id == config)
        lo, hi = c.start_ns, c.end_ns
    if serving is not None:
        # (span, key of its band's gid, whether it is the shown configuration's)
        bands = [(span, label, True) for span, label in serving]
        labelled = [(span.start_ns, span.end_ns, label) for span, label in serving]
    else:
        bands = [(span, str(span.config_id), config is None or span.config_id in (config, None)) for span in t.phases]
        labelled = _labelled_spans(t, config)
    samples = rec.samples
    samples = samples[(samples["t_ns"] >= lo) & (samples["t_ns"] <= hi)]
    gpus = sorted(int(g) for g in samples["gpu"].unique()) or [g.index for g in run.gpus] or [0]
    fig = _new_figure(13, 1.0 + 2.6 * len(gpus))
    axes = fig.subplots(len(gpus), 1, sharex=True, squeeze=False)[:, 0]
    seen: dict[str, Any] = {}
    for ax, gpu in zip(axes, gpus):
        for span, key, mine in bands:
            if span.end_ns <= lo or span.start_ns >= hi:
                continue
            x0, x1 = (max(span.start_ns, lo) - t.start_ns) / 1e9, (min(span.end_ns, hi) - t.start_ns) / 1e9
            color = PHASE_COLOR.get(span.phase, "0.8")
            # A serving run's load phases follow one another: a white edge parts them.
            style = {"facecolor": color, "edgecolor": "white", "linewidth": 1.5} if serving is not None else \
                {"color": color, "linewidth": 0}
            band = ax.axvspan(x0, x1, alpha=0.28 if mine else 0.08, gid=f"phase|{span.phase}|{key}|{span.start_ns}",
                              **style)
            seen.setdefault(span.phase, band)
        s = samples[samples["gpu"] == gpu]
        (line,) = ax.plot((s["t_ns"].to_numpy() - t.start_ns) / 1e9, s[run.signal].to_numpy(float),
                          color="black", linewidth=0.6)
        line.set_gid(f"power|{gpu}")
        meta = next((g for g in run.gpus if g.index == gpu), None)
        tdp = meta.tdp_w if meta is not None else None
        if tdp is not None:
            ax.axhline(tdp, color="tab:red", linestyle="--", linewidth=0.8, gid=f"tdp|{gpu}")
            # The TUI's fixed 0-TDP scale, widened where instant power went above the TDP.
            ax.set_ylim(0, max(tdp, float(np.nanmax(line.get_ydata(), initial=0))) * 1.05)
        name = meta.name if meta is not None and meta.name else "GPU"
        ax.set_ylabel(f"GPU {gpu} {run.signal} (W)")
        ax.set_title(f"GPU {gpu}: {name}" + ("" if tdp is None else f", TDP {tdp:.0f} W"), fontsize=9, loc="left")
    from matplotlib.transforms import blended_transform_factory

    top = axes[0]
    where = blended_transform_factory(top.transData, top.transAxes)
    for s_ns, e_ns, label in labelled:
        mid = (max(s_ns, lo) + min(e_ns, hi)) / 2
        top.text((mid - t.start_ns) / 1e9, 0.98, label, transform=where, rotation=90, fontsize=7,
                 ha="center", va="top", gid=f"{'phase' if serving is not None else 'config'}-label|{label}",
                 bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1})
    top.set_xlim((lo - t.start_ns) / 1e9, (hi - t.start_ns) / 1e9)
    axes[-1].set_xlabel("time since the run started (s)")
    order = [p for p in PHASE_LABEL if p in seen]
    fig.legend([seen[p] for p in order], [PHASE_LABEL[p] for p in order], loc="outside lower center",
               ncols=len(order), fontsize=8, frameon=False)
    clock = tl.wall_clock(run, t.start_ns)
    when = ""
    if clock is not None:
        started = pd.Timestamp(int(clock.unix(np.array([t.start_ns]))[0]), unit="ns", tz="UTC")
        when = f", started {started:%Y-%m-%d %H:%M:%S} UTC" + ("" if clock.exact else " (to the second)")
    what = f"configuration {config}" if config else "whole serving run" if serving is not None else "whole run"
    fig.suptitle(f"{src.label}: power over time, {what}{when}" + (" (simulated GPU)" if run.simulated else ""),
                 fontsize=10)
    return fig



# -------------------------------------------------------------------------- serving


def _serving_label(src: Source) -> str:
    """A serving source as the figure names it: its file and its card."""
    gpu = src.meta.get("gpu") or {}
    return f"{src.label} ({gpu.get('name') or 'GPU'})"


SERIES_GAP_PT = 4.0  # sideways gap between the serving figure's series, so whiskers stay apart


def serving_figure(srcs: Sequence[Source], rate: str = "offered") -> Figure:
    """Per precision and source: J per prefill and per decode token and the idle share
    against the offered (or achieved) rate, with 95% intervals; poor fits named in a note."""
    if rate not in RATE_AXES:
        raise PlotError(f"unknown rate axis {rate!r}; allowed: {', '.join(RATE_AXES)}")
    frames = [(src, rates_frame(analyse(src.data))) for src in srcs]
    if all(df.empty for _, df in frames):
        raise PlotError(f"{', '.join(s.label for s in srcs)}: no load phases to draw")
    from matplotlib.ticker import PercentFormatter
    from matplotlib.transforms import ScaledTranslation

    series = [(src, p) for src, df in frames
              for p in sorted(dict.fromkeys(df["precision"]) if not df.empty else [], key=precision_rank)]
    fig = _new_figure(13, 4.6)
    axes = fig.subplots(1, len(SERVING_PANELS))
    poor: list[str] = []
    drawn = []  # (series, its rows with a fit that holds)
    for src, precision in series:
        df = next(d for s, d in frames if s is src)
        rows = df[df["precision"] == precision]
        ok = rows[rows["fit_ok"].astype(bool)]
        poor += [f"{src.label} {precision_label(precision)} at {r['offered_rps']:g}/s: {r['fit_reason']}"
                 for _, r in rows[~rows["fit_ok"].astype(bool)].iterrows()]
        if not ok.empty:  # else nothing to draw: the note names each of its rates
            drawn.append((src, precision, ok))
    for j, (src, precision, ok) in enumerate(drawn):
        label = f"{_serving_label(src)} {precision_label(precision)}"
        x = ok[f"{rate}_rps"].to_numpy(float)
        # Series side by side at the same rate: shifted on the page (SERIES_GAP_PT apart,
        # said under the axis), not in the data.
        shift = ScaledTranslation((j - (len(drawn) - 1) / 2) * SERIES_GAP_PT / 72, 0, fig.dpi_scale_trans)
        for ax, (col, _) in zip(axes, SERVING_PANELS):
            y = ok[col].to_numpy(float)
            low, high = ok[f"{col}_low"].to_numpy(float), ok[f"{col}_high"].to_numpy(float)
            bars = ax.errorbar(x, y, yerr=[y - low, high - y], fmt="o-", color=f"C{j}", capsize=3, markersize=5,
                               linewidth=1, label=label)
            bars.lines[0].set_gid(f"serving|{src.label}|{precision}|{col}")
            bars.lines[2][0].set_gid(f"serving-whiskers|{src.label}|{precision}|{col}")
            for artist in (bars.lines[0], *bars.lines[1], *bars.lines[2]):
                artist.set_transform(artist.get_transform() + shift)
    for ax, (col, title) in zip(axes, SERVING_PANELS):
        ax.set_title(title)
        ax.set_xlabel(f"{rate} rate (requests/s)"
                      + (f"; series set {SERIES_GAP_PT:g} pt apart" if len(drawn) > 1 else ""))
        ax.grid(color="0.9")
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("J per token (95% interval)")
    axes[-1].yaxis.set_major_formatter(PercentFormatter(1.0))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize=8, frameon=False)
    if poor:
        note = fig.supxlabel("\n".join(["not drawn, fit poor:", *poor]), fontsize=7, x=0.01, ha="left")
        note.set_gid("serving-poor")
    simulated = " (simulated GPU)" if any(src.meta.get("simulated") for src in srcs) else ""
    fig.suptitle("Energy per token under serving load: counter energy fitted as idle + prefill + decode tokens"
                 + simulated, fontsize=10)
    return fig


# --------------------------------------------------------------------------- public


def _check_kind(src: Source, kind: str) -> None:
    """A sweep kind on a serving recording, or the serving kind on a sweep, is refused
    naming the kind and what the source is."""
    if kind in SWEEP_KINDS and is_serving(src.meta):
        raise PlotError(f"{src.label}: a serving recording (serve-bench); --kind {kind} draws sweeps; "
                        "for this recording: --kind serving or --kind timeline")
    if kind == "serving" and not is_serving(src.meta):
        raise PlotError(f"{src.label}: a sweep {src.kind}; --kind serving draws serving recordings (serve-bench); "
                        f"for this {src.kind}: --kind {' or --kind '.join(SWEEP_KINDS)}"
                        + (" or --kind timeline" if src.kind == "recording" else ""))


def figure(sources: Any, kind: str | None = None, *, config: str | None = None, rate: str = "offered") -> Figure:
    """The figure of ``kind`` for ``sources`` (paths, Recordings, Tables); without a kind,
    ``serving`` where every source is a serving recording, else ``ratios``. ``rate`` is the
    serving figure's x axis."""
    if kind is not None and kind not in KINDS:
        raise PlotError(f"unknown figure kind {kind!r}; allowed: {', '.join(KINDS)}")
    _matplotlib()
    srcs = open_sources(sources)
    if kind is None:
        serving = [s.label for s in srcs if is_serving(s.meta)]
        if serving and len(serving) < len(srcs):
            others = [s.label for s in srcs if not is_serving(s.meta)]
            raise PlotError(f"serving recordings ({', '.join(serving)}) and sweeps ({', '.join(others)}) "
                            "do not share a figure; plot each kind on its own")
        kind = "serving" if serving else "ratios"
    if config is not None and kind != "timeline":
        raise PlotError(f"--config narrows a timeline; --kind {kind} draws every configuration")
    if rate != "offered" and kind != "serving":
        raise PlotError(f"--rate picks the serving figure's axis; --kind {kind} has none")
    for src in srcs:
        _check_kind(src, kind)
    if kind == "timeline":
        if len(srcs) != 1:
            raise PlotError(f"a timeline draws one recording; got {len(srcs)} sources")
        return timeline_figure(srcs[0], config)
    if kind == "serving":
        return serving_figure(srcs, rate)
    a = analyze(srcs)
    return ratios_figure(a) if kind == "ratios" else power_figure(a)


def plot(sources: Sequence[Any] | Any, out: str | Path, kind: str | None = None, *, config: str | None = None,
         rate: str = "offered") -> Path:
    """Draw ``kind`` and write it to ``out``; the format is the file's suffix (png, svg,
    pdf). Written atomically: the file is complete or absent."""
    path = Path(out)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise PlotError(f"{path}: unknown figure format {path.suffix or '(none)'!r}; "
                        f"allowed: {', '.join('.' + f for f in FORMATS)}")
    fig = figure(sources, kind, config=config, rate=rate)
    buf = io.BytesIO()
    # No creation date, so the same recording gives the same SVG or PDF file every time.
    meta: dict[str, Any] = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]
    from matplotlib import rc_context

    # SVG element ids are random unless salted.
    with rc_context({"svg.hashsalt": "wattscope"}):
        fig.savefig(buf, format=fmt, metadata=meta, bbox_inches="tight")
    return write_atomic(path, buf.getvalue())

