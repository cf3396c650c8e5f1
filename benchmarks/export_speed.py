"""How long exports take on an hour-long 100 Hz recording (360,000 samples).

Builds the recording with the real writer (``wattscope.recording.Recorder``) from
simulated data: 24 configurations (3 models x 2 batches x 4 precisions), each with an
idle-free block of 3 prefill and 3 decode measured windows, power samples at 100 Hz and
the energy counter every 10th sample; ConfigResults come from ``metrics.config_result``
as in a live run. Then times, on the loaded recording:

- analysis + every table in md, csv, json and latex, and each table in parquet;
- raw traces (samples and windows) as csv and as parquet.

Target: each of the two export groups under 1 s on the 2-core development machine.
Run: ``python benchmarks/export_speed.py`` (a temporary folder is used and removed).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from wattscope import analysis, export, metrics
from wattscope.config import parse
from wattscope.events import ConfigFinished, ConfigStarted, RunEnded, RunStarted, Samples, Window
from wattscope.recording import Recorder, load

HZ = 100
SECONDS = 3600
SWEEP = """
name = "export-bench"
[[matrix]]
models = ["synthetic:Qwen2-1.5B", "synthetic:Qwen2.5-3B", "synthetic:Yi-1.5-6B"]
batches = [1, 8]
precisions = ["fp16", "bf16", "int8", "nf4"]
"""
# precision -> (prefill W, decode W, relative time per call)
LEVELS = {"fp16": (280.0, 240.0, 1.0), "bf16": (285.0, 245.0, 1.0), "int8": (110.0, 95.0, 6.5), "nf4": (230.0, 190.0, 2.6)}


def build(path: Path) -> None:
    sweep = parse(SWEEP, "bench.toml")
    n = SECONDS * HZ
    t0 = 10**12
    t_ns = t0 + np.arange(n, dtype=np.int64) * (10**9 // HZ)
    power = np.full(n, 70.0)
    block = n // len(sweep.configs)  # samples per configuration
    window = block // 6
    rng = np.random.default_rng(0)
    plan = []
    for i, rc in enumerate(sweep.configs):
        pw, dw, slow = LEVELS[rc.precision]
        start = i * block
        for k in range(6):
            phase = "prefill" if k < 3 else "decode"
            a, b = start + k * window, start + (k + 1) * window - 5
            power[a:b] = (pw if phase == "prefill" else dw) + rng.normal(0, 3, b - a)
            plan.append((rc, phase, k % 3 + 1, a, b, slow))
    # NVML reports power in mW and energy in mJ, so real samples have at most 3 decimals.
    power = np.round(power, 3)
    energy = np.round(np.concatenate(([0.0], np.cumsum((power[1:] + power[:-1]) / 2 / HZ))), 3)
    counter = np.where(np.arange(n) % 10 == 0, energy, np.nan)
    fresh = np.where(np.arange(n) % 10 == 0, 7, 1)
    cols = [t_ns.tolist(), [0] * n, power.tolist(), power.tolist(), counter.tolist(),
            [1980.0] * n, [90.0] * n, [60.0] * n, [20000.0] * n, fresh.tolist()]
    rows = list(zip(*cols))

    rec = Recorder(path)
    rec.write(RunStarted(t_ns=t0, meta={"gpu": {"index": 0, "name": "Simulated H100", "tdp_w": 700.0},
                                        "simulated": True, "sweep": sweep.to_dict()}))
    for j in range(0, n, HZ // 10):  # 100 ms batches, as the sampler sends them
        rec.write(Samples(t_ns=int(t_ns[min(j + 9, n - 1)]), rows=rows[j:j + 10]))
    by_config: dict[str, list[Window]] = {}
    for rc, phase, rep, a, b, slow in plan:
        calls = max(1, int(200 / slow)) if phase == "prefill" else max(1, int(20 / slow))
        w = Window(t_ns=int(t_ns[b]), config_id=rc.config_id, phase=phase, role="measure", repeat=rep,
                   start_ns=int(t_ns[a]), end_ns=int(t_ns[b]), energy_start_j=float(energy[a]),
                   energy_end_j=float(energy[b]), calls=calls, steps=32 if phase == "decode" else 0,
                   tokens=rc.batch * (32 if phase == "decode" else 128) * calls)
        rec.write(w)
        by_config.setdefault(rc.config_id, []).append(w)
    for i, rc in enumerate(sweep.configs):
        t = by_config[rc.config_id][-1].t_ns
        started = ConfigStarted(t_ns=t, config_id=rc.config_id, index=i, total=len(sweep.configs), model=rc.model,
                                batch=rc.batch, precision=rc.precision, synthetic=True, repeats=3)
        result, warnings = metrics.config_result(started, ConfigFinished(t_ns=t, config_id=rc.config_id, ok=True),
                                                 by_config[rc.config_id], 70.0)
        for ev in (started, result, *warnings):
            rec.write(ev)
    rec.write(RunEnded(t_ns=int(t_ns[-1]), status="completed"))
    rec.close()


def timed(label: str, fn) -> float:
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    print(f"{label:<44} {dt * 1000:8.1f} ms")
    return dt


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "hour.wattscope"
        t = time.perf_counter()
        build(path)
        print(f"built {path.stat().st_size / 1e6:.1f} MB recording in {time.perf_counter() - t:.1f} s")
        rec = load(path)
        timed("load samples + windows (reader, not export)", lambda: (rec.samples, rec.windows, rec.results))
        print(f"{len(rec.samples):,} samples, {len(rec.windows)} windows, {len(rec.results)} configurations")
        out = Path(d) / "out"

        def tables() -> None:
            a = analysis.analyze(rec)
            for fmt, ext in (("md", "md"), ("csv", "csv"), ("json", "json"), ("latex", "tex")):
                export.export(a, fmt, "all", out / f"all.{ext}")
            for table in ("phases", "power", "findings", "crosscheck"):
                export.export(a, "parquet", table, out / f"{table}.parquet")

        total = timed("analyze + all tables (md, csv, json, latex, parquet)", tables)
        total += timed("raw traces csv", lambda: export.export_traces(rec, "csv", out / "csv"))
        total += timed("raw traces parquet", lambda: export.export_traces(rec, "parquet", out / "pq"))
        print(f"{'export total':<44} {total * 1000:8.1f} ms")
        rec.close()


if __name__ == "__main__":
    main()
