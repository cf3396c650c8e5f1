"""How well the sampler process keeps its clock: achieved rate, tick lateness (p99
jitter), drops, fresh values per second per signal and the sampler's own CPU.

    python benchmarks/sampler_rate.py                 # simulated GPU, 100 Hz and 1 kHz, 10 s each
    python benchmarks/sampler_rate.py --nvml --seconds 20 --json out/sampler_rate.json

Targets: achieved >= 99% of target at 100 Hz and 1 kHz, p99 jitter <= 2 ms, CPU at
100 Hz <= 3% of one core. The first stats window (process start-up) is left out.
"""

from __future__ import annotations

import argparse
import json
import platform
import queue as queue_mod
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattscope.events import Samples, SamplerStats  # noqa: E402
from wattscope.telemetry import SamplerProcess, SensorSpec, SimGPU, SimSpec  # noqa: E402
from wattscope.telemetry.sensor import SIGNALS  # noqa: E402


def bench(spec: SensorSpec, rate_hz: float, seconds: float, energy_hz: float, spin_s: float) -> dict[str, Any]:
    sp = SamplerProcess([spec], rate_hz=rate_hz, energy_hz=energy_hz, spin_s=spin_s)
    sp.start()
    stats: list[SamplerStats] = []
    n_rows = n_energy = 0
    t_first = t_last = None

    def take(ev: Any) -> None:
        nonlocal n_rows, n_energy, t_first, t_last
        if isinstance(ev, Samples):
            for r in ev.rows:
                n_rows += 1
                n_energy += r[4] == r[4]
                t_first = r[0] if t_first is None else t_first
                t_last = r[0]
        elif isinstance(ev, SamplerStats):
            stats.append(ev)
        else:
            print("  event:", ev)

    end = time.monotonic() + seconds + 1.0  # + the first window, which is dropped
    while time.monotonic() < end:
        try:
            take(sp.queue.get(timeout=0.2))
        except queue_mod.Empty:
            if not sp.is_alive():
                break
    sp.stop()
    while True:
        try:
            take(sp.queue.get(timeout=0.5))
        except queue_mod.Empty:
            break
    if sp.failure():
        raise SystemExit(sp.failure())
    steady = stats[1:] or stats
    span_s = (t_last - t_first) / 1e9 if t_first is not None and t_last != t_first else float("nan")
    return {
        "target_hz": rate_hz,
        "windows": len(steady),
        "achieved_hz": statistics.fmean(s.achieved_hz for s in steady),
        "achieved_pct": 100.0 * statistics.fmean(s.achieved_hz for s in steady) / rate_hz,
        "rows_hz": (n_rows - 1) / span_s,
        "jitter_p99_ms_median": statistics.median(s.jitter_p99_ms for s in steady),
        "jitter_p99_ms_max": max(s.jitter_p99_ms for s in steady),
        "drops": sum(s.drops for s in steady),
        "drops_per_s": sum(s.drops for s in steady) / len(steady),
        "energy_rows_per_s": n_energy / span_s,
        "distinct_per_s": {sig: statistics.fmean(s.distinct_per_s[sig] for s in steady) for sig in SIGNALS},
        "cpu_pct": statistics.fmean(s.cpu_pct for s in steady),
        "cpu_pct_max": max(s.cpu_pct for s in steady),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nvml", action="store_true", help="sample NVML GPU --gpu instead of the simulated GPU")
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per rate")
    ap.add_argument("--rates", default="100,1000", help="comma-separated rates in Hz")
    ap.add_argument("--energy-hz", type=float, default=10.0)
    ap.add_argument("--spin", type=float, default=0.0, help="busy-wait this long (s) before each deadline")
    ap.add_argument("--json", metavar="OUT", help="write the results here as JSON")
    args = ap.parse_args()

    sim = None
    if args.nvml:
        spec = SensorSpec.nvml(args.gpu)
    else:
        sim = SimGPU.create(SimSpec())
        spec = SensorSpec.simulated(sim)
    results = []
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            r = bench(spec, rate, args.seconds, args.energy_hz, args.spin)
            results.append(r)
            d = r["distinct_per_s"]
            print(
                f"{rate:6.0f} Hz: achieved {r['achieved_hz']:.2f} Hz ({r['achieved_pct']:.2f}%), rows {r['rows_hz']:.2f} Hz, "
                f"p99 jitter {r['jitter_p99_ms_median']:.3f} ms (worst window {r['jitter_p99_ms_max']:.3f}), "
                f"drops {r['drops']} ({r['drops_per_s']:.2f}/s), CPU {r['cpu_pct']:.2f}% (worst {r['cpu_pct_max']:.2f}%)"
            )
            print(
                f"         energy rows {r['energy_rows_per_s']:.2f}/s; distinct/s: "
                + ", ".join(f"{k} {v:.1f}" for k, v in d.items())
            )
    finally:
        if sim is not None:
            sim.close()
    if args.json:
        out = {
            "source": "nvml" if args.nvml else "sim",
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
            "python": platform.python_version(),
            "seconds": args.seconds,
            "spin_s": args.spin,
            "results": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
