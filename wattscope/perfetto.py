"""A recording as a Trace Event Format file for ui.perfetto.dev and chrome://tracing
(``wattscope export REC --format perfetto -o run.json``).

One process per recording, with tracks:
- ``sweep``: nested slices: each group of rows measured together (each configuration in
  recordings made before groups), inside it each stretch of one configuration's phases,
  inside that each phase (``wattscope.timeline`` spans; a child is clipped to its parent
  so the slices always nest);
- ``windows``: each measured window as a slice from its start edge to its end edge, its
  energy, calls, steps, tokens and counter readings as arguments;
- ``warnings``: each warning as an instant event;
- counter tracks ``GPU n power (W)`` (the instant-power samples) and ``GPU n energy
  counter (J)`` (the samples where the counter was read).

Timestamps are microseconds since ``baseTimeNanoseconds`` (Unix ns), as torch profiler
(Kineto) traces write them, so the file lines up with a profiler trace of the same run by
wall time: base + ts x 1000 is the Unix time. The run's wall-clock anchor (exact, or
reconstructed from the meta's ``created`` to the second) is in ``metadata.wattscope``; a
recording with no anchor at all counts from the run's start and says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wattscope import timeline as tl
from wattscope.analysis import open_source
from wattscope.config import RunConfig
from wattscope.errors import WattscopeError
from wattscope.export import write_atomic
from wattscope.metrics import precision_label, run_meta
from wattscope.render import PHASE_LABEL

PID = 1
SWEEP_TID, WINDOWS_TID, WARNINGS_TID = 1, 2, 3


class PerfettoError(WattscopeError, ValueError):
    """A trace that cannot be made, phrased for the user."""


@dataclass(frozen=True)
class _Slice:
    start_ns: int
    end_ns: int
    level: int  # 0 group, 1 configuration, 2 phase: parents sort before children
    name: str
    cat: str
    args: dict[str, Any]


def _config_name(c: tl.ConfigSpan, group: bool) -> str:
    model = RunConfig("", c.model, 1, "").model_label
    engine = "" if c.engine == "eager" else f" ({c.engine})"
    return f"{model} b{c.batch}{engine}" if group else f"{model} b{c.batch} {precision_label(c.precision)}{engine}"


def _groups(t: tl.Timeline) -> list[tuple[int, int, str, list[str]]]:
    """(start, end, name, config ids) per group, in time order, made not to overlap."""
    spans: dict[str, tuple[int, int, str, list[str]]] = {}
    for c in t.configs:
        key = c.group or c.config_id
        s, e, name, ids = spans.get(key, (c.start_ns, c.end_ns, _config_name(c, c.group is not None), []))
        spans[key] = (min(s, c.start_ns), max(e, c.end_ns), name, [*ids, c.config_id])
    out = sorted(spans.values())
    for i in range(len(out) - 1):
        s, e, name, ids = out[i]
        out[i] = (s, min(e, out[i + 1][0]), name, ids)
    return out


def _sweep_slices(t: tl.Timeline) -> list[_Slice]:
    groups = _groups(t)
    starts = [g[0] for g in groups]
    slices = [_Slice(s, e, 0, name, "group", {"configs": ids}) for s, e, name, ids in groups]
    clipped: list[tuple[tl.Span, int, int, int | None]] = []  # span, start, end, its group
    for p in t.phases:
        i = int(np.searchsorted(starts, p.start_ns, side="right")) - 1
        if i >= 0 and p.start_ns < groups[i][1]:
            end, g = min(p.end_ns, groups[i][1]), i
        else:
            nxt = groups[i + 1][0] if i + 1 < len(groups) else p.end_ns
            end, g = min(p.end_ns, nxt), None
        clipped.append((p, p.start_ns, end, g))
    # A configuration's stretch: consecutive phases naming it within a group of several
    # rows (a group of one is already named by its own slice).
    run: list[tuple[tl.Span, int, int, int | None]] = []

    def close() -> None:
        g = run[0][3] if run else None
        if g is not None and run[0][0].config_id is not None and len(groups[g][3]) > 1:
            slices.append(_Slice(run[0][1], run[-1][2], 1, str(run[0][0].config_id), "config",
                                 {"config_id": run[0][0].config_id}))

    for item in clipped:
        if run and (item[0].config_id != run[-1][0].config_id or item[3] != run[-1][3]):
            close()
            run = []
        run.append(item)
    close()
    for p, s, e, _ in clipped:
        args: dict[str, Any] = {"phase": p.phase, "config_id": p.config_id}
        if p.repeat is not None:
            args["round"] = p.repeat
        slices.append(_Slice(s, e, 2, PHASE_LABEL.get(p.phase, p.phase), "phase", args))
    return slices


def _clean(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def trace(recording: Any) -> dict[str, Any]:
    """The Trace Event Format object of a recording (a path, Recording or Source)."""
    src = open_source(recording)
    if src.kind != "recording":
        raise PerfettoError(f"{src.label}: an imported table has no timeline; give a recording")
    rec = src.data
    run = run_meta(rec.meta)
    t = tl.of_recording(rec)
    clock = tl.wall_clock(run, t.start_ns)
    if clock is not None:
        base_ns = int(clock.unix(np.array([t.start_ns]))[0]) // 1_000_000_000 * 1_000_000_000
        shift = base_ns - (clock.unix_ns - clock.monotonic_ns)  # monotonic ns at ts = 0
    else:
        base_ns, shift = None, t.start_ns

    def us(t_ns: Any) -> float:
        return round((int(t_ns) - shift) / 1000, 3)

    gpu_name = (run.gpu.name if run.gpu else "") or "GPU"
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": PID, "tid": 0, "name": "process_name",
         "args": {"name": f"wattscope {src.label} ({gpu_name}{', simulated' if run.simulated else ''})"}},
        {"ph": "M", "pid": PID, "tid": SWEEP_TID, "name": "thread_name", "args": {"name": "sweep"}},
        {"ph": "M", "pid": PID, "tid": WINDOWS_TID, "name": "thread_name", "args": {"name": "windows"}},
        {"ph": "M", "pid": PID, "tid": WARNINGS_TID, "name": "thread_name", "args": {"name": "warnings"}},
    ]
    timed: list[tuple[float, int, float, dict[str, Any]]] = []  # (ts, level, -dur, event) for the sort
    for s in _sweep_slices(t):
        ts, dur = us(s.start_ns), round((s.end_ns - s.start_ns) / 1000, 3)
        timed.append((ts, s.level, -dur, {"ph": "X", "pid": PID, "tid": SWEEP_TID, "ts": ts, "dur": dur,
                                          "name": s.name, "cat": s.cat, "args": s.args}))
    for w in rec.windows.to_dict(orient="records"):
        ts, dur = us(w["start_ns"]), round((w["end_ns"] - w["start_ns"]) / 1000, 3)
        args = {k: _clean(w[k]) for k in ("config_id", "phase", "role", "repeat", "calls", "steps", "tokens",
                                           "energy_j", "energy_start_j", "energy_end_j", "duration_s", "work_s")}
        work_end = w["work_end_ns"]  # NaN where the work ran to the end edge (idle windows)
        args["work_end_ts"] = us(work_end) if isinstance(work_end, (int, float)) and math.isfinite(work_end) else None
        name = f"{w['phase']} window" + (f" ({w['config_id']})" if isinstance(w["config_id"], str) else "")
        timed.append((ts, 0, -dur, {"ph": "X", "pid": PID, "tid": WINDOWS_TID, "ts": ts, "dur": dur,
                                    "name": name, "cat": w["role"], "args": args}))
    for warning in t.warnings:
        ts = us(warning.t_ns)
        timed.append((ts, 0, 0.0, {"ph": "i", "s": "t", "pid": PID, "tid": WARNINGS_TID, "ts": ts,
                                   "name": warning.message, "cat": warning.source,
                                   "args": {"source": warning.source, "config_id": warning.config_id}}))
    samples = rec.samples
    for gpu in sorted(int(g) for g in samples["gpu"].unique()):
        s = samples[samples["gpu"] == gpu]
        for column, name, unit in ((run.signal, f"GPU {gpu} power (W)", "W"),
                                   ("energy_j", f"GPU {gpu} energy counter (J)", "J")):
            rows = s[np.isfinite(s[column].to_numpy(float))]
            for t_ns, v in zip(rows["t_ns"].to_numpy(), rows[column].to_numpy(float)):
                ts = us(t_ns)
                timed.append((ts, 0, 0.0, {"ph": "C", "pid": PID, "tid": 0, "ts": ts, "name": name,
                                           "args": {unit: float(v)}}))
    timed.sort(key=lambda x: x[:3])
    events += [e for *_, e in timed]
    out: dict[str, Any] = {"displayTimeUnit": "ms", "traceEvents": events}
    if base_ns is not None:
        out["baseTimeNanoseconds"] = base_ns
    out["metadata"] = {"wattscope": {
        "recording": str(getattr(rec, "path", src.label)),
        "gpu": gpu_name,
        "simulated": run.simulated,
        "ts": ("microseconds since baseTimeNanoseconds (Unix ns), as torch profiler traces"
               if base_ns is not None else "microseconds since the run started: the recording has no wall-clock anchor"),
        "wall_clock": None if clock is None else {
            **clock.to_meta(),
            "note": "recorded anchor" if clock.exact else "reconstructed from the meta's 'created' (to the second)",
        },
        "run_start_monotonic_ns": t.start_ns,
        "monotonic_ns_at_ts_0": shift,
    }}
    return out


def export_perfetto(recording: Any, out_path: str | Path | None = None) -> str:
    """The trace as JSON text; with ``out_path`` also written there atomically."""
    text = json.dumps(trace(recording), separators=(",", ":"), allow_nan=False) + "\n"
    if out_path is not None:
        write_atomic(out_path, text)
    return text
