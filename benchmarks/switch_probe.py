"""Why are interleaved windows noisier than consecutive ones? The shape of a window's
energy per call after a switch to another precision or phase.

In the protocol's rounds every window follows a window of another precision or phase.
Held alone (14 consecutive windows, pinned), FP16 batch-8 decode varied 1.8% window to
window; in rounds the same figure varied 12-24%. This probe measures, after each switch,
``--subs`` consecutive sub-windows of ``--sub-s`` seconds each (the protocol's own
``_window``: GPU synchronised, both edges on an energy-counter update, gc off, process
pinned to one core, torch CPU threads 1), so one run shows:

  * the transient: energy per call and time per call by sub-window index after a switch;
  * what a window with a lead-in would give: sub-windows 2..n joined (the first one
    run but not counted) against 1..n joined (what the protocol does now), as the
    CV of energy per call and the spread of the per-round NF4/FP16 and INT8/FP16 ratios.

Synthetic Qwen2-1.5B (synthetic weights), eager engine, FP16/INT8/NF4 loaded together,
batches 1 and 8, rounds in an order shuffled per round (seeded).

    PYTHONUNBUFFERED=1 python benchmarks/switch_probe.py --json $OUT/switch_probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wattscope import config, stats  # noqa: E402
from wattscope.bench import engines, models  # noqa: E402
from wattscope.bench.protocol import PhaseSpec, _window, calls_for  # noqa: E402
from wattscope.telemetry import SensorSpec, open_sensor  # noqa: E402

PRECISIONS = ("fp16", "int8", "nf4")


def _sweep(batch: int) -> config.Sweep:
    text = f"""
name = "switch-probe"
[[matrix]]
models = ["synthetic:Qwen2-1.5B"]
batches = [{batch}]
precisions = {list(PRECISIONS)!r}
"""
    return config.parse(text.replace("'", '"'), str(ROOT / "switch_probe.toml"))


def _joined(subs: list[Any], first: int) -> float:
    """Energy per call over sub-windows first.. (0-based) joined."""
    part = subs[first:]
    return sum(w.energy_j for w in part) / sum(w.calls for w in part)


def _cv(xs: list[float]) -> float:
    return statistics.stdev(xs) / statistics.fmean(xs) if len(xs) > 1 else math.nan


def _ratio_hw(num: list[float], den: list[float]) -> float:
    return stats.paired_ratio([a / b for a, b in zip(num, den)]).half_width


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup-rounds", type=int, default=1)
    ap.add_argument("--subs", type=int, default=5)
    ap.add_argument("--sub-s", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    sensor = open_sensor(SensorSpec.nvml(args.gpu))
    cache = models.WeightCache(tempfile.mkdtemp(prefix="wattscope-switch-"))
    rng = random.Random(f"switch-probe/{args.seed}")
    stop = threading.Event()
    out: dict[str, Any] = {
        "benchmark": "switch_probe", "weights": "synthetic", "host": platform.node(),
        "pinned_core": core, "subs": args.subs, "sub_s": args.sub_s, "rounds": args.rounds, "cases": {},
    }

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2))

    try:
        for batch in (int(b) for b in args.batches.split(",")):
            sweep = _sweep(batch)
            p = sweep.protocol
            loaded: dict[str, Any] = {}
            for rc in sweep.configs:
                info: dict[str, Any] = {}
                w = engines.build_workload(rc, sweep, args.device, cache, info)
                w.prepare_decode()
                out["device_name"] = info.get("device_name")
                loaded[rc.precision] = w
            specs: dict[tuple[str, str], tuple[PhaseSpec, int, Any]] = {}
            for prec, w in loaded.items():
                for phase in ("prefill", "decode"):
                    call = w.prefill if phase == "prefill" else (lambda w=w: w.decode_run(p.decode_steps))
                    spec = PhaseSpec(phase, call, p.min_calls if phase == "prefill" else 1,
                                     0 if phase == "prefill" else p.decode_steps, 0)
                    for _ in range(3):
                        call()
                    w.synchronize()
                    t0 = time.perf_counter()
                    call()
                    w.synchronize()
                    n = calls_for(time.perf_counter() - t0, config.Protocol(min_window_s=args.sub_s), 1)
                    specs[(prec, phase)] = (spec, n, w)
            items = list(specs)
            series: dict[str, list[list[tuple[float, float]]]] = {f"{k[0]}/{k[1]}": [] for k in items}
            for r in range(args.warmup_rounds + args.rounds):
                rng.shuffle(items)
                for key in items:
                    spec, n, w = specs[key]
                    subs = [_window(spec, n, "measure", r, "probe", w, sensor, stop, args.sub_s) for _ in range(args.subs)]
                    # Re-size from the last sub-window so they keep their length.
                    n = max(1, math.ceil(args.sub_s / (subs[-1].work_s / subs[-1].calls)))
                    specs[key] = (spec, n, w)
                    if r >= args.warmup_rounds:
                        series[f"{key[0]}/{key[1]}"].append(
                            [(s.energy_j / s.calls, s.work_s / s.calls) for s in subs])
            case: dict[str, Any] = {}
            for name, rounds in series.items():
                by_index = list(zip(*rounds))
                e_idx = [statistics.fmean(x[0] for x in col) for col in by_index]
                t_idx = [statistics.fmean(x[1] for x in col) for col in by_index]
                joined_all = [sum(x[0] for x in rd) / len(rd) for rd in rounds]
                joined_lead = [sum(x[0] for x in rd[1:]) / (len(rd) - 1) for rd in rounds]
                case[name] = {
                    "energy_per_call_by_sub": e_idx,
                    "seconds_per_call_by_sub": t_idx,
                    "first_over_rest": e_idx[0] / statistics.fmean(e_idx[1:]),
                    "cv_no_lead": _cv(joined_all),
                    "cv_lead_in": _cv(joined_lead),
                    "cv_first_sub": _cv([rd[0][0] for rd in rounds]),
                    "cv_last_sub": _cv([rd[-1][0] for rd in rounds]),
                    "per_round_no_lead": joined_all,
                    "per_round_lead_in": joined_lead,
                }
            for prec in ("int8", "nf4"):
                for phase in ("prefill", "decode"):
                    num, den = case[f"{prec}/{phase}"], case[f"fp16/{phase}"]
                    case[f"{prec}/{phase}"]["ratio_hw_no_lead"] = _ratio_hw(num["per_round_no_lead"], den["per_round_no_lead"])
                    case[f"{prec}/{phase}"]["ratio_hw_lead_in"] = _ratio_hw(num["per_round_lead_in"], den["per_round_lead_in"])
            out["cases"][f"b{batch}"] = case
            for name, c in case.items():
                extra = ""
                if "ratio_hw_no_lead" in c:
                    extra = f" ratio hw {c['ratio_hw_no_lead']:.1%} -> {c['ratio_hw_lead_in']:.1%}"
                print(f"b{batch} {name}: first/rest {c['first_over_rest']:.3f}, CV {c['cv_no_lead']:.1%} -> "
                      f"{c['cv_lead_in']:.1%} (first sub {c['cv_first_sub']:.1%}, last {c['cv_last_sub']:.1%}){extra}; "
                      f"J/call by sub {[round(x, 3) for x in c['energy_per_call_by_sub']]}", flush=True)
            for w in loaded.values():
                w.close()
            models.release_memory()
            save()
    finally:
        sensor.close()
        cache.cleanup()
    out["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
