"""A small, deterministic recording-like run for the analysis and export tests.

The windows are generated from chosen per-call energies and powers, turned into
ConfigResults by the real ``metrics.config_result``, and exposed with the attributes
``wattscope.load`` gives (``meta``, ``samples``, ``windows``, ``results``, ``warnings``),
without SQLite. ``events()`` gives the same run as an event stream for the recorder.

The numbers are picked to exercise every finding: an NF4 decode crossover, an INT8 row
whose decode overhead exceeds its prefill overhead, low-power slow INT8 (under 25% of a
700 W TDP), a failed row, a failed FP16 baseline, and a noisy row (CV above 3%).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wattscope import metrics
from wattscope.config import parse
from wattscope.events import (
    SAMPLE_COLUMNS,
    ConfigFinished,
    ConfigResult,
    ConfigStarted,
    Event,
    RunEnded,
    RunStarted,
    RunWarning,
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

    def events(self) -> list[Event]:
        return self.event_list


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
