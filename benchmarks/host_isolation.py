"""Which host lever makes energy windows repeatable? Window-to-window CV of energy per
call for one phase held, under three settings interleaved window by window:

  free    the process may run on any core, torch's default CPU threads, gc enabled
  pinned  the process on one core, torch CPU threads 1, gc enabled inside windows
  isolated  pinned, and gc disabled inside windows (what `wattscope run` does)

    python benchmarks/host_isolation.py --json $OUT/host_isolation.json     # GPU machine

Cases: synthetic Qwen2-1.5B FP16 (synthetic weights), batch-1 decode, batch-8 decode,
batch-1 prefill. Windows are the protocol's own (wattscope.bench.protocol._window: GPU
synchronised, both edges on an energy-counter update, at least --window-s). The settings
rotate in an order shuffled per round (seeded), after --warmup windows of each case that
are not counted, so drift falls on all three alike. The sampler does not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wattscope import config  # noqa: E402
from wattscope.bench import engines, models  # noqa: E402
from wattscope.bench.protocol import PhaseSpec, _window, calls_for  # noqa: E402
from wattscope.telemetry import SensorSpec, open_sensor  # noqa: E402

SETTINGS = ("free", "pinned", "isolated")


def _sweep(batch: int) -> config.Sweep:
    text = f"""
name = "host-isolation"
[protocol]
min_window_s = 1.0
[[matrix]]
models = ["synthetic:Qwen2-1.5B"]
batches = [{batch}]
precisions = ["fp16"]
"""
    return config.parse(text, str(ROOT / "host_isolation.toml"))


def _apply(setting: str, all_cpus: set[int], core: int, default_threads: int) -> None:
    import torch

    if setting == "free":
        os.sched_setaffinity(0, all_cpus)
        torch.set_num_threads(default_threads)
    else:
        os.sched_setaffinity(0, {core})
        torch.set_num_threads(1)


def _measure(setting: str, spec: PhaseSpec, n: int, w: Any, sensor: Any, p: config.Protocol) -> Any:
    return _window(spec, n, "measure", 0, "bench", w, sensor, threading.Event(), p.min_window_s,
                   gc_paused=setting == "isolated")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--window-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    all_cpus = set(os.sched_getaffinity(0))
    core = max(all_cpus)
    default_threads = torch.get_num_threads()
    sensor = open_sensor(SensorSpec.nvml(args.gpu))
    cache = models.WeightCache(tempfile.mkdtemp(prefix="wattscope-host-"))
    rng = random.Random(f"host-isolation/{args.seed}")
    out: dict[str, Any] = {"cases": {}}
    try:
        for case, batch, phase in (("decode b1", 1, "decode"), ("decode b8", 8, "decode"), ("prefill b1", 1, "prefill")):
            sweep = _sweep(batch)
            p = replace(sweep.protocol, min_window_s=args.window_s)
            info: dict[str, Any] = {}
            w = engines.build_workload(sweep.configs[0], sweep, args.device, cache, info)
            w.prepare_decode()
            call = w.prefill if phase == "prefill" else (lambda: w.decode_run(p.decode_steps))
            spec = PhaseSpec(phase, call, p.min_calls if phase == "prefill" else 1, 0 if phase == "prefill" else 32, 0)
            for _ in range(3):
                call()
            w.synchronize()
            t0 = time.perf_counter()
            call()
            w.synchronize()
            n = calls_for(time.perf_counter() - t0, p, spec.min_calls)
            for _ in range(args.warmup):
                _apply("pinned", all_cpus, core, default_threads)
                _measure("isolated", spec, n, w, sensor, p)
            per_call: dict[str, list[float]] = {s: [] for s in SETTINGS}
            seconds_per_call: dict[str, list[float]] = {s: [] for s in SETTINGS}
            for _ in range(args.rounds):
                order = list(SETTINGS)
                rng.shuffle(order)
                for s in order:
                    _apply(s, all_cpus, core, default_threads)
                    win = _measure(s, spec, n, w, sensor, p)
                    per_call[s].append(win.energy_j / win.calls)
                    seconds_per_call[s].append(win.work_s / win.calls)
            _apply("free", all_cpus, core, default_threads)
            w.close()
            models.release_memory()
            res = {}
            for s in SETTINGS:
                e = per_call[s]
                res[s] = {
                    "energy_per_call_j": e,
                    "median_j": statistics.median(e),
                    "cv": statistics.stdev(e) / statistics.fmean(e),
                    "time_cv": statistics.stdev(seconds_per_call[s]) / statistics.fmean(seconds_per_call[s]),
                }
            out["cases"][case] = res
            print(f"{case}: " + ", ".join(f"{s} CV {res[s]['cv']:.1%} (time {res[s]['time_cv']:.1%})" for s in SETTINGS),
                  flush=True)
            out["device_name"] = info.get("device_name")
    finally:
        sensor.close()
        cache.cleanup()
    out |= {
        "benchmark": "host_isolation",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": sorted(all_cpus),
        "pinned_core": core,
        "default_torch_threads": default_threads,
        "rounds": args.rounds,
        "window_s": args.window_s,
        "weights": "synthetic",
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
