"""Do two runs of one sweep agree, and are their intervals tight? The issue-8 targets
for two recordings of the same config made back to back on one machine:

  * in each run, >= 90% of the non-baseline ratios have a 95% interval half-width <= 3%;
  * for >= 90% of the ratios, each run's value lies inside the other run's interval.

    python benchmarks/repeatability.py RUN1.wattscope RUN2.wattscope --json out.json

Ratios and intervals are the recordings' own (wattscope.metrics.ratio_value), matched
by configuration id; a ratio missing from either run (a failed row) counts as a miss.

Beside the target's test it reports the statistically fitting one: is the difference of
the two runs within its own 95% interval (half-widths added in quadrature, on the log
scale the intervals are made on)? Two runs with equally wide, correctly calibrated 95%
intervals put each value inside the other's interval only ~83% of the time one way
(|Z| < 1.96/sqrt 2), so ">= 90% both ways" fails even for perfect intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wattscope import metrics, recording  # noqa: E402

SHARE = 0.90


def _ratios(path: Path) -> tuple[dict[tuple[str, str], metrics.RatioValue | None], dict[str, Any]]:
    rec = recording.load(path)
    out: dict[tuple[str, str], metrics.RatioValue | None] = {}
    for row in rec.results.to_dict("records"):
        if metrics.is_baseline(row["precision"]):
            continue
        for name in metrics.RATIO_NAMES:
            out[(row["config_id"], name)] = metrics.ratio_value(row, name) if row["ok"] else None
    meta = metrics.run_meta(rec.meta)
    return out, {"path": str(path), "gpu": meta.gpus[0].name if meta.gpus else "", "status": rec.status}


def _inside(v: metrics.RatioValue | None, other: metrics.RatioValue | None) -> bool:
    return (v is not None and other is not None and other.low is not None and other.high is not None
            and other.low <= v.value <= other.high)


def _consistent(v: metrics.RatioValue | None, other: metrics.RatioValue | None) -> bool:
    if v is None or other is None or not (v.half_width >= 0 and other.half_width >= 0):
        return False
    # A relative half-width h is log(1 + h) on the log scale, to first order.
    return abs(math.log(v.value / other.value)) <= math.hypot(v.half_width, other.half_width)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs=2, type=Path)
    ap.add_argument("--target", type=float, default=0.03, help="half-width target (0.03 = +-3%%)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    (a, meta_a), (b, meta_b) = (_ratios(p) for p in args.runs)
    keys = sorted(set(a) | set(b))
    rows = []
    for key in keys:
        va, vb = a.get(key), b.get(key)
        rows.append({
            "config_id": key[0], "ratio": key[1],
            "run1": None if va is None else [va.value, va.low, va.high, va.half_width],
            "run2": None if vb is None else [vb.value, vb.low, vb.high, vb.half_width],
            "tight1": va is not None and va.half_width <= args.target,
            "tight2": vb is not None and vb.half_width <= args.target,
            "agree": _inside(va, vb) and _inside(vb, va),
            "consistent": _consistent(va, vb),
        })
    n = len(rows)
    summary = {
        "ratios": n,
        "tight_run1": sum(r["tight1"] for r in rows),
        "tight_run2": sum(r["tight2"] for r in rows),
        "agree": sum(r["agree"] for r in rows),
        "consistent": sum(r["consistent"] for r in rows),
    }
    passed = n > 0 and all(summary[k] >= SHARE * n for k in ("tight_run1", "tight_run2", "agree"))
    for r in rows:
        cells = [f"{v[0]:.3f} ±{v[3]:.1%}" if v else "failed" for v in (r["run1"], r["run2"])]
        print(f"{r['config_id']:<28} {r['ratio']:<22} {cells[0]:>16} {cells[1]:>16} {'agree' if r['agree'] else 'DIFFER'}"
              f" {'consistent' if r['consistent'] else 'INCONSISTENT'}")
    print(f"{n} ratios: half-width <= {args.target:.0%} in {summary['tight_run1']} (run 1) and {summary['tight_run2']} (run 2); "
          f"each inside the other's interval: {summary['agree']}; target {SHARE:.0%} of each: {'PASS' if passed else 'FAIL'}; "
          f"difference within its own 95% interval: {summary['consistent']}")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "repeatability", "target_half_width": args.target, "share": SHARE,
                                         "runs": [meta_a, meta_b], "summary": summary, "pass": passed, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
