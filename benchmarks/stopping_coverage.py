"""Does an interval that stopped the rounds still cover the true ratio 95% of the time?

Rounds stop as soon as every ratio's 95% interval is within ci_target
(``wattscope.bench.protocol.rounds_enough``, the protocol's own rule, run here on
simulated rounds). Stopping when the interval is narrow picks the moments when the
rounds' sample SD happens to be low, so the stopped intervals can cover less than their
nominal 95%. This script measures by how much: each seed draws per-round log ratios
with a known true ratio and a per-round CV (the sd of the log ratio), applies the rule
after every round, and checks whether the final interval (``wattscope.stats``) holds the
true ratio. Coverage is reported with its 95% Wilson interval over the seeds, and the
mean rounds to stop (the device time the rule costs).

    python benchmarks/stopping_coverage.py [--seeds 2000] [--cvs 0.003,0.01,0.02,0.04,0.08]
        [--min-rounds 3,8] [--ratios 1] [--json benchmarks/results/stopping-coverage-DATE.json]

``--ratios N`` gives every simulated group N independent ratios of the same CV that the
rule must all bring within target (a group of FP16 and NF4 has 3); coverage is counted
on the first. N = 1 is the worst case: the rule then selects on that ratio alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wattscope.bench.protocol import rounds_enough  # noqa: E402
from wattscope.config import Protocol  # noqa: E402
from wattscope.stats import binomial_interval, paired_ratio  # noqa: E402

TRUE_RATIO = 1.5


def simulate(cv: float, p: Protocol, seeds: int, ratios: int = 1, first_seed: int = 0) -> dict[str, Any]:
    """Coverage of the true ratio by the stopped interval over ``seeds`` seeded groups."""
    hits = rounds_total = at_max = 0
    for seed in range(first_seed, first_seed + seeds):
        rng = random.Random(f"stopping-coverage/{seed}")
        per_ratio: list[list[float]] = [[] for _ in range(ratios)]
        k = 0
        while True:
            k += 1
            for rounds in per_ratio:
                rounds.append(TRUE_RATIO * math.exp(rng.gauss(0.0, cv)))
            if rounds_enough(per_ratio, k, p):
                break
        e = paired_ratio(per_ratio[0])
        hits += e.low <= TRUE_RATIO <= e.high
        rounds_total += k
        at_max += k >= p.max_rounds
    low, high = binomial_interval(hits, seeds)
    return {"cv": cv, "min_rounds": p.min_rounds, "coverage": hits / seeds, "coverage_ci": [low, high],
            "mean_rounds": rounds_total / seeds, "stopped_at_max_rounds": at_max / seeds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2000)
    ap.add_argument("--cvs", default="0.003,0.01,0.02,0.04,0.08", help="per-round CVs (sd of the log ratio)")
    ap.add_argument("--min-rounds", default=f"3,{Protocol().min_rounds}", help="min_rounds values to compare")
    ap.add_argument("--ratios", type=int, default=1)
    ap.add_argument("--ci-target", type=float, default=Protocol().ci_target)
    ap.add_argument("--max-rounds", type=int, default=Protocol().max_rounds)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cvs = [float(c) for c in args.cvs.split(",")]
    mins = list(dict.fromkeys(int(m) for m in args.min_rounds.split(",")))
    base = replace(Protocol(), ci_target=args.ci_target, max_rounds=args.max_rounds)
    rows = []
    for m in mins:
        for cv in cvs:
            r = simulate(cv, replace(base, min_rounds=m), args.seeds, args.ratios)
            rows.append(r)
            lo, hi = r["coverage_ci"]
            print(f"min_rounds {m:>3}  CV {cv:>6.1%}  coverage {r['coverage']:.3f} [{lo:.3f}, {hi:.3f}]  "
                  f"mean rounds {r['mean_rounds']:.1f}  at max_rounds {r['stopped_at_max_rounds']:.1%}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "stopping_coverage", "date": dt.date.today().isoformat(),
            "settings": {"seeds": args.seeds, "seed_strings": "stopping-coverage/<seed>, seeds 0..N-1",
                         "true_ratio": TRUE_RATIO, "ci_target": args.ci_target, "max_rounds": args.max_rounds,
                         "ratios_per_group": args.ratios, "confidence": 0.95,
                         "rule": "wattscope.bench.protocol.rounds_enough", "interval": "wattscope.stats.paired_ratio"},
            "rows": rows,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
