"""Synthetic runs for the tests, whose results follow from their own windows.

``build()``: a small, deterministic recording-like run for the analysis and export
tests. The windows are generated from chosen per-call energies and powers, turned into
ConfigResults by the real ``metrics.config_result``, and exposed with the attributes
``wattscope.load`` gives (``meta``, ``samples``, ``windows``, ``results``, ``warnings``),
without SQLite. ``events()`` gives the same run as an event stream for the recorder.
Its numbers are picked to exercise every finding: an NF4 decode crossover, an INT8 row
whose decode overhead exceeds its prefill overhead, low-power slow INT8 (under 25% of a
700 W TDP), a failed row, a failed FP16 baseline, and a noisy row (CV above 3%).

``event_stream()``: a timed simulated run (samples, phases, interleaved rounds) for the
state, replay and display tests, its windows sized from the seed study's per-call
figures and its results derived by ``metrics.group_result``.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wattscope import metrics, render
from wattscope.config import BASELINE_PRECISION, Protocol, RunConfig, parse
from wattscope.events import (
    FRESH_ENERGY,
    FRESH_POWER,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    ConfigFinished,
    ConfigResult,
    ConfigStarted,
    Event,
    PhaseStarted,
    RunEnded,
    RunStarted,
    RunWarning,
    SamplerStats,
    Samples,
    Window,
)

SWEEP_TOML = """
name = "synthetic-run"
[protocol]
min_rounds = 3
[[matrix]]
models = ["synthetic:Qwen2-1.5B"]
batches = [1, 8]
precisions = ["fp16", "bf16", "int8", "nf4"]
[[matrix]]
models = ["synthetic:Qwen2.5-3B"]
batches = [1]
precisions = ["fp16", "int8"]
"""

TDP_W = 700.0
IDLE_W = 70.0
STEPS = 32
# config_id -> (prefill J/call, prefill W, decode J/run, decode W) or a failure reason
PLAN: dict[str, tuple[float, float, float, float] | str] = {
    "Qwen2-1.5B/b1/fp16": (1.0, 250.0, 40.0, 200.0),
    "Qwen2-1.5B/b1/bf16": (1.02, 255.0, 41.0, 205.0),
    "Qwen2-1.5B/b1/int8": (5.0, 110.0, 130.0, 95.0),
    "Qwen2-1.5B/b1/nf4": (3.5, 200.0, 36.0, 180.0),
    "Qwen2-1.5B/b8/fp16": (1.4, 300.0, 48.0, 260.0),
    "Qwen2-1.5B/b8/bf16": (1.45, 300.0, 49.0, 262.0),
    "Qwen2-1.5B/b8/int8": (6.0, 120.0, 220.0, 100.0),
    "Qwen2-1.5B/b8/nf4": "CUDA out of memory",
    "Qwen2.5-3B/b1/fp16": "model failed to load",
    "Qwen2.5-3B/b1/int8": (6.5, 115.0, 180.0, 98.0),
}
# Window-to-window energy multipliers; the noisy row gets a spread above 3%.
STEADY = (1.0, 1.01, 0.995)
NOISY = (1.0, 1.06, 0.95)
NOISY_ROW = "Qwen2-1.5B/b1/bf16"
# Integrated instant power under-counts prefill bursts more than steady decode.
INTEGRATED = {"prefill": 0.95, "decode": 0.99}


@dataclass
class SyntheticRun:
    path: Path
    meta: dict[str, Any]
    samples: pd.DataFrame
    windows: pd.DataFrame
    results: pd.DataFrame
    warnings: pd.DataFrame
    event_list: list[Event] = field(default_factory=list)

    def events(self, *, samples: bool = True) -> list[Event]:
        return self.event_list if samples else [e for e in self.event_list if not isinstance(e, Samples)]


def _meta(sweep_dict: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "simulated": True,
        "weights": "synthetic",
        "packages": {"torch": "2.11.0", "transformers": "5.17.0", "bitsandbytes": "0.50.2"},
        "gpu": {
            "index": 0,
            "name": "Simulated H100",
            "driver_version": "580.159.04",
            "tdp_w": TDP_W,
            "signal_sources": {"power_w": "simulated", "energy_j": "simulated"},
            "signals_absent": {},
            "refresh_s": {"power_w": 0.1, "energy_j": 0.1},
        },
        "energy_signal": "NVML total energy counter, read at both edges of each window after a GPU synchronize",
        "sampler": {"rate_hz": 100.0, "energy_hz": 10.0, "gpus": [0]},
        "sweep": sweep_dict,
        "status": "completed",
    }


def build() -> SyntheticRun:
    sweep = parse(SWEEP_TOML, "synthetic.toml")
    t = 1_000_000_000
    energy = 0.0
    events: list[Event] = []
    windows: list[Window] = []

    def window(cid: str | None, phase: str, role: str, repeat: int, seconds: float, joules: float,
               calls: int, steps: int, tokens: int) -> Window:
        nonlocal t, energy
        start, e0 = t, energy
        t += int(round(seconds * 1e9))
        energy += joules
        w = Window(t_ns=t, config_id=cid, phase=phase, role=role, repeat=repeat, start_ns=start, end_ns=t,
                   energy_start_j=e0, energy_end_j=energy, calls=calls, steps=steps, tokens=tokens)
        windows.append(w)
        events.append(w)
        t += 100_000_000  # gap between windows
        return w

    meta = _meta(sweep.to_dict())
    events.append(RunStarted(t_ns=t, meta=meta))
    window(None, "idle", "idle", 1, 5.0, 5.0 * IDLE_W, 0, 0, 0)
    idle_w = metrics.idle_power_w(windows)
    results: list[ConfigResult] = []
    warnings: list[RunWarning] = []
    for i, rc in enumerate(sweep.configs):
        started = ConfigStarted(t_ns=t, config_id=rc.config_id, index=i, total=len(sweep.configs), model=rc.model,
                                batch=rc.batch, precision=rc.precision, synthetic=rc.synthetic, repeats=3)
        events.append(started)
        plan = PLAN[rc.config_id]
        if isinstance(plan, str):
            finished = ConfigFinished(t_ns=t, config_id=rc.config_id, ok=False, reason=plan)
        else:
            pj, pw, dj, dw = plan
            spread = NOISY if rc.config_id == NOISY_ROW else STEADY
            # A warm-up window that never enters the figures (25% hotter, as on a cold card).
            window(rc.config_id, "prefill", "warmup", 1, 2.0, 2.0 * pw * 1.25, 10, 0, 0)
            calls = max(5, round(2.0 / (pj / pw)))
            for r, m in enumerate(spread, 1):
                window(rc.config_id, "prefill", "measure", r, calls * pj / pw, calls * pj * m, calls, 0,
                       rc.batch * 128 * calls)
            runs = max(1, round(2.0 / (dj / dw)))
            for r, m in enumerate(spread, 1):
                # Decode time varies with the energy so tok/s is noisy too.
                window(rc.config_id, "decode", "measure", r, runs * dj / dw * m, runs * dj * m, runs, STEPS,
                       rc.batch * STEPS * runs)
            finished = ConfigFinished(t_ns=t, config_id=rc.config_id, ok=True)
        events.append(finished)
        result, warns = metrics.config_result(started, finished, windows, idle_w)
        results.append(result)
        warnings += warns
        events += [result, *warns]
    events.append(RunEnded(t_ns=t, status="completed"))

    wdf = pd.DataFrame([
        {k: getattr(w, k) for k in ("config_id", "phase", "role", "repeat", "start_ns", "end_ns",
                                    "energy_start_j", "energy_end_j", "calls", "steps", "tokens")}
        for w in windows
    ])
    wdf["energy_j"] = wdf["energy_end_j"] - wdf["energy_start_j"]
    wdf["duration_s"] = (wdf["end_ns"] - wdf["start_ns"]) / 1e9
    wdf["power_w"] = wdf["energy_j"] / wdf["duration_s"]
    wdf["integrated_j"] = wdf["energy_j"] * wdf["phase"].map(INTEGRATED).fillna(1.0)

    rdf = pd.DataFrame([
        {"config_id": r.config_id, "model": r.model, "batch": r.batch, "precision": r.precision,
         "synthetic": r.synthetic, "ok": r.ok, "reason": r.reason, **r.figures}
        for r in results
    ])
    warn_df = pd.DataFrame([{"t_ns": w.t_ns, "source": w.source, "config_id": w.config_id, "message": w.message}
                            for w in warnings], columns=["t_ns", "source", "config_id", "message"])

    # 2 s of 100 Hz samples: enough rows to exercise the traces export.
    n = 200
    ts = 1_000_000_000 + np.arange(n, dtype=np.int64) * 10_000_000
    power = IDLE_W + 5.0 * np.sin(np.arange(n) / 10.0)
    energy_col = np.where(np.arange(n) % 10 == 0, np.cumsum(power) * 0.01, np.nan)
    samples = pd.DataFrame({
        "t_ns": ts, "gpu": 0, "power_w": power, "power_avg_w": power, "energy_j": energy_col,
        "sm_clock_mhz": 1980.0, "util_pct": 0.0, "temp_c": 35.0, "mem_used_mib": 512.0,
        "fresh": np.where(np.arange(n) % 10 == 0, 7, 0),
    })[list(SAMPLE_COLUMNS)]
    events.insert(1, Samples(t_ns=int(ts[-1]), rows=[tuple(r) for r in samples.itertuples(index=False)]))
    return SyntheticRun(Path("synthetic_run.wattscope"), meta, samples, wdf, rdf, warn_df, events)


# ------------------------------------------------------------------- event stream

# The seed study's per-call measurements (RTX PRO 6000): prefill J per call, decode J per
# 32-token run, decode tok/s, prefill W, per model, batch and precision. ``event_stream``
# sizes its windows from them (energy per call x calls, time per call x calls); its
# results then follow from those windows through ``metrics.group_result``, so they keep
# the seed's shape (INT8 costlier and slower than FP16, NF4 in between) without being
# copied from it.
SEED_CALLS: dict[tuple[str, int, str], tuple[float, float, float, float]] = {
    ("Qwen2-1.5B", 1, "fp16"): (0.924, 42.737, 105.26, 92.0),
    ("Qwen2-1.5B", 1, "int8"): (4.736, 135.724, 15.79, 67.0),
    ("Qwen2-1.5B", 1, "nf4"): (3.569, 71.281, 41.10, 114.0),
    ("Qwen2-1.5B", 8, "fp16"): (1.326, 48.156, 789.97, 160.0),
    ("Qwen2-1.5B", 8, "int8"): (5.829, 154.507, 112.77, 80.0),
    ("Qwen2-1.5B", 8, "nf4"): (4.511, 133.460, 244.35, 200.0),
    ("Qwen2.5-3B", 1, "fp16"): (1.575, 73.191, 80.74, 120.0),
    ("Qwen2.5-3B", 1, "int8"): (6.620, 186.035, 12.30, 75.0),
    ("Qwen2.5-3B", 1, "nf4"): (6.412, 108.622, 31.71, 150.0),
    ("Qwen2.5-3B", 8, "fp16"): (2.423, 81.280, 636.22, 210.0),
    ("Qwen2.5-3B", 8, "int8"): (8.364, 212.776, 86.55, 95.0),
    ("Qwen2.5-3B", 8, "nf4"): (7.886, 234.826, 188.79, 280.0),
    ("Yi-1.5-6B", 8, "fp16"): (3.645, 116.080, 617.32, 247.0),
    ("Yi-1.5-6B", 8, "int8"): (9.124, 218.745, 99.99, 109.0),
    ("Yi-1.5-6B", 8, "nf4"): (12.126, 365.331, 222.80, 326.0),
}
STREAM_T0_NS = 1_000_000_000_000
STREAM_IDLE_W = 60.0
STREAM_LOAD_W = 90.0
STREAM_GPU = "NVIDIA H100 80GB HBM3"
# Per round, a drift of time and energy every precision of the group shares (it cancels
# in the paired ratios), and per window a seeded jitter of each of up to +-0.2% (it does not).
DRIFT = (1.0, 1.01, 0.995)
JITTER = 0.002
# Decode work-time multipliers per round of a noisy row: its tok/s varies by ~5%.
NOISY_TIME = (1.0, 1.06, 0.95)
# The window's tail: from the end of the work to the counter update that closes it.
TAIL_S = 0.05


def event_stream(
    configs: Iterable[tuple[str, int, str]] = (
        ("Qwen2-1.5B", 1, "fp16"),
        ("Qwen2-1.5B", 1, "int8"),
        ("Qwen2-1.5B", 1, "nf4"),
    ),
    rate_hz: float = 100.0,
    phase_s: float = 1.0,
    repeats: int = 3,
    failures: dict[str, str] | None = None,
    noisy: Iterable[str] = ("Qwen2-1.5B/b1/nf4",),
    ci_target: float | None = Protocol().ci_target,
    seed: int = 0,
) -> list[Event]:
    """A plausible simulated run as an event list in time order, laid out as the
    protocol measures (``wattscope.bench.protocol``): per group (consecutive configs of
    one model and batch) every row's ConfigStarted, each row's load, an idle window with
    the group loaded, a warm-up, ``repeats`` interleaved rounds (one prefill and one
    decode window per row, in a seeded shuffled order), a cool-down, then each row's
    ConfigFinished (FP16 first) and the ConfigResult ``metrics.group_result`` derives
    from the windows. Sample batches every 100 ms at ``rate_hz`` follow the windows'
    power; SamplerStats every second. A window lasts at least ``phase_s`` (and holds at
    least one decode run or five prefill calls). ``failures`` maps config ids to a load
    failure; rows in ``noisy`` get a decode time that varies ~5% between rounds."""
    failures = failures or {}
    noisy = set(noisy)
    rows = [RunConfig(f"{m}/b{b}/{p}", f"synthetic:{m}", b, p) for m, b, p in configs]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "gpu": {"name": STREAM_GPU, "index": 0, "tdp_w": TDP_W, "refresh_s": {"power_w": 0.1}},
        "simulated": True,
        "weights": "synthetic",
        "sweep": {
            "name": "synthetic-seed",
            "configs": [{"config_id": rc.config_id, "model": rc.model, "batch": rc.batch,
                         "precision": rc.precision} for rc in rows],
        },
    }
    out: list[Event] = [RunStarted(STREAM_T0_NS, meta)]
    started: list[ConfigStarted] = []
    windows: list[Window] = []
    # (start_ns, end_ns, watts) segments the sample generator turns into rows.
    segments: list[tuple[int, int, float]] = []
    t = STREAM_T0_NS

    def hold(seconds: float, watts: float) -> tuple[int, float]:
        """The card at ``watts`` for ``seconds`` from now: (start, energy)."""
        nonlocal t
        start = t
        t += int(round(seconds * 1e9))
        segments.append((start, t, watts))
        return start, watts * seconds

    def phase(config_id: str | None, name: str, seconds: float, watts: float) -> None:
        out.append(PhaseStarted(t, config_id, name))
        hold(seconds, watts)

    energy = 0.0  # the counter
    groups: dict[str, list[RunConfig]] = {}
    for rc in rows:
        groups.setdefault(rc.group, []).append(rc)
    for gid, group in groups.items():
        rng = random.Random(f"synthetic-stream/{seed}/{gid}")
        for rc in group:
            s = ConfigStarted(t, rc.config_id, rows.index(rc), len(rows), rc.model, rc.batch, rc.precision,
                              rc.synthetic, repeats, rc.engine, gid)
            started.append(s)
            out.append(s)
        for rc in group:
            phase(rc.config_id, "load", phase_s, STREAM_LOAD_W)
            if rc.config_id in failures:
                out.append(RunWarning(t, "runner", f"{rc.config_id}: {failures[rc.config_id]}", rc.config_id))
        live = [rc for rc in group if rc.config_id not in failures]
        if live:
            out.append(PhaseStarted(t, None, "idle"))
            a, joules = hold(phase_s, STREAM_IDLE_W)
            w = Window(t, None, "idle", "idle", 1, a, t, energy, energy + joules, 0, 0, 0, group=gid)
            energy += joules
            windows.append(w)
            out.append(w)
            phase(None, "warmup", phase_s, statistics.fmean(_decode_power(rc) for rc in live))
        for r in range(1, repeats + 1):
            items = [(rc, name) for rc in live for name in ("prefill", "decode")]
            rng.shuffle(items)
            for rc, name in items:
                pre_j, dec_j, tok_s, pre_w = _seed(rc)
                drift = DRIFT[(r - 1) % len(DRIFT)]
                e_jitter, t_jitter = (1 + rng.uniform(-JITTER, JITTER) for _ in range(2))
                if name == "prefill":
                    per_call_j, per_call_s, min_calls, steps, tokens = pre_j, pre_j / pre_w, 5, 0, rc.batch * 128
                else:
                    slow = NOISY_TIME[(r - 1) % len(NOISY_TIME)] if rc.config_id in noisy else 1.0
                    per_call_j, per_call_s = dec_j, rc.batch * STEPS / tok_s * slow
                    min_calls, steps, tokens = 1, STEPS, rc.batch * STEPS
                calls = max(min_calls, math.ceil(phase_s / per_call_s))
                work_s, work_j = calls * per_call_s * drift * t_jitter, calls * per_call_j * drift * e_jitter
                out.append(PhaseStarted(t, rc.config_id, name, r))
                a, _ = hold(work_s, work_j / work_s)
                work_end = t
                _, tail_j = hold(TAIL_S, STREAM_IDLE_W)
                w = Window(t, rc.config_id, name, "measure", r, a, t, energy, energy + work_j + tail_j, calls, steps,
                           tokens * calls, work_end_ns=work_end, round=r, group=gid)
                energy += work_j + tail_j
                windows.append(w)
                out.append(w)
        phase(None, "cooldown", phase_s / 2, STREAM_IDLE_W)
        for rc in sorted(group, key=lambda rc: rc.precision != BASELINE_PRECISION):
            s = started[[x.config_id for x in started].index(rc.config_id)]
            reason = failures.get(rc.config_id, "")
            finished = ConfigFinished(t, rc.config_id, not reason, reason)
            result, warnings = metrics.group_result(s, finished, started, windows, ci_target)
            out += [finished, result, *warnings]
    out.extend(_sample_events(segments, rate_hz, STREAM_T0_NS, t))
    out.append(RunEnded(t + 1, "completed"))
    out.sort(key=lambda e: e.t_ns)  # stable: an event precedes the samples sent with it
    return out


def result_of(events: Iterable[Event], config_id: str) -> ConfigResult:
    """The ConfigResult a stream holds for one row."""
    return next(e for e in events if isinstance(e, ConfigResult) and e.config_id == config_id)


def result_cells(events: Iterable[Event], config_id: str, sep: str = " ") -> str:
    """A row's seed columns and ratios as every results table prints them, from the
    stream's own ConfigResult (what a display test expects to see)."""
    f = result_of(events, config_id).figures
    cells = [render.fmt_figure(n, f[n]) for n in ("prefill_energy_j", "decode_energy_j", "decode_tok_s")]
    cells += [render.fmt_ratio(metrics.ratio_value(f, n)) for n in metrics.RATIO_NAMES]
    return sep.join(cells)


def _seed(rc: RunConfig) -> tuple[float, float, float, float]:
    return SEED_CALLS.get((rc.model_label, rc.batch, rc.precision), (1.0, 50.0, 100.0, 150.0))


def _decode_power(rc: RunConfig) -> float:
    _, dec_j, tok_s, _ = _seed(rc)
    return dec_j / (rc.batch * STEPS / tok_s)


def _sample_events(segments: list[tuple[int, int, float]], rate_hz: float, t0: int, t_end: int) -> list[Event]:
    """Rows at ``rate_hz``, power refreshed every 100 ms like an H100 (held between
    refreshes, with a small deterministic ripple), sent in batches every 100 ms."""
    dt = int(1e9 / rate_hz)
    refresh = 100_000_000
    batch_ns = 100_000_000
    out: list[Event] = []
    rows: list[tuple] = []
    seg = 0
    energy = 0.0
    next_send = t0 + batch_ns
    prev = None
    for k, ts in enumerate(range(t0, t_end, dt)):
        while seg + 1 < len(segments) and ts >= segments[seg][1]:
            seg += 1
        held = ts - (ts - t0) % refresh
        n = (held - t0) // refresh
        watts = segments[seg][2] * (1.0 + 0.02 * ((n * 7919) % 11 - 5) / 5)
        energy += watts * dt / 1e9
        fresh = FRESH_POWER if watts != prev else 0
        prev = watts
        read_energy = k % max(1, int(rate_hz / 10)) == 0
        rows.append((ts, 0, watts, watts, energy if read_energy else float("nan"), 1755.0, 90.0, 55.0, 20000.0,
                     fresh | (FRESH_ENERGY if read_energy else 0)))
        if ts + dt >= next_send:
            out.append(Samples(next_send, rows))
            rows = []
            next_send += batch_ns
    if rows:
        out.append(Samples(min(next_send, t_end), rows))
    for s in range(t0 + 1_000_000_000, t_end + 1, 1_000_000_000):
        out.append(SamplerStats(s, rate_hz, rate_hz * 0.998, 0.4, 0, {"power_w": 10.0, "power_avg_w": 10.0,
                                                                          "energy_j": 10.0}, 2.5))
    return out


def record(events: Iterable[Event], path: Path, **meta: Any) -> Path:
    """Write an event stream to a real recording file at ``path``; ``meta`` keys are added
    to its RunStarted meta (a clock anchor, say)."""
    from wattscope.recording import Recorder

    rec = Recorder(path)
    for e in events:
        if isinstance(e, RunStarted) and meta:
            e = RunStarted(e.t_ns, {**e.meta, **meta})
        rec.write(e)
    rec.close()
    return path
