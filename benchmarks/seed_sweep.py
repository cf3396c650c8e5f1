"""Time a whole sweep through the runner (no sampler, no UI): total and per-row
seconds, warm-up windows each phase needed, warnings and failed rows.

    python benchmarks/seed_sweep.py configs/seed.toml --sim                 # simulated GPU
    python benchmarks/seed_sweep.py configs/seed.toml --sim --refresh-s 0.1 # H100-like counter
    python benchmarks/seed_sweep.py configs/quick.toml --json out/quick.json  # GPU machine

With --sim the sweep runs with its [sim] timing (Sweep.for_simulation()); the target
for configs/seed.toml is under ~25 s in total.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wattscope import config  # noqa: E402
from wattscope.bench.runner import run_sweep  # noqa: E402
from wattscope.events import ConfigFinished, ConfigStarted, Event, RunWarning, Window  # noqa: E402
from wattscope.telemetry import SimSensor, SimSpec, open_sensor, SensorSpec  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--sim", action="store_true")
    ap.add_argument("--refresh-s", type=float, default=0.002, help="simulated counter refresh (--sim)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    sweep = config.load(args.config)
    if args.sim:
        sweep = sweep.for_simulation()
        sensor: Any = SimSensor(SimSpec(seed=sweep.sim.seed, refresh_s=args.refresh_s))
    else:
        sensor = open_sensor(SensorSpec.nvml(args.gpu))
    events: list[Event] = []

    def emit(e: Event) -> None:
        events.append(e)
        if isinstance(e, ConfigFinished):
            print(f"  {e.config_id:28s} {'ok' if e.ok else 'FAILED: ' + e.reason}", flush=True)
        elif isinstance(e, RunWarning):
            print(f"  warning: {e.message}", flush=True)

    t0 = time.perf_counter()
    try:
        done = run_sweep(sweep, sensor, emit, sim=args.sim, device=args.device)
    finally:
        sensor.close()
    total = time.perf_counter() - t0

    starts = {e.config_id: e.t_ns for e in events if isinstance(e, ConfigStarted)}
    rows = []
    for e in events:
        if isinstance(e, ConfigFinished):
            warm = Counter(w.phase for w in events if isinstance(w, Window) and w.config_id == e.config_id and w.role == "warmup")
            rows.append({"config_id": e.config_id, "ok": e.ok, "reason": e.reason,
                         "seconds": (e.t_ns - starts[e.config_id]) / 1e9, "warmup_windows": dict(warm)})
    windows = [e for e in events if isinstance(e, Window)]
    result = {
        "benchmark": "seed_sweep",
        "config": str(args.config),
        "sim": args.sim,
        "refresh_s": args.refresh_s if args.sim else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "completed": done,
        "total_s": total,
        "windows": len(windows),
        "window_s": sum(w.duration_s for w in windows),
        "warnings": [e.message for e in events if isinstance(e, RunWarning)],
        "rows": rows,
    }
    print(f"{len(rows)} rows in {total:.1f} s ({len(windows)} windows, {result['window_s']:.1f} s inside windows, "
          f"{len(result['warnings'])} warnings, {sum(not r['ok'] for r in rows)} failed)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
