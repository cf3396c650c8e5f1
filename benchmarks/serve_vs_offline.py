"""Issue 12's light-rate check: does the serving attribution's J per decode token agree
with the offline protocol's decode energy per token at the same model and batch?

    python benchmarks/serve_vs_offline.py OFFLINE.wattscope CHECK.json [CHECK.json...] -o OUT.json

CHECK.json is benchmarks/serve_check.py's output for the serving recordings.

Both sides are energy above idle, so they are alike: the serving fit's J per decode token
is its coefficient over idle power x time (the idle window of the same engine, model
loaded), and the offline side here is each measured decode window's counter energy less
the group's idle power (CUDA context alive, model loaded) x the window's length, over the
decode tokens the window produced (calls x steps x batch). That figure has a 95%
t-interval over the rounds (one window per round; the idle power's own uncertainty left
out, as in serve_check.py). The offline table's decode energy per token is the whole
counter energy, idle included; it is printed beside for scale.

Each serving phase is set against the offline batch nearest its mean number of decoding
sequences per engine step (from the engine's step log, as serve_check.py counts it). The serving figure is the
streamed fit's, printed whether or not the fit passed its R2 gate (``fit_ok`` says).
Two tests, as in repeatability.py: ``inside`` (each value inside the other's interval, which
two honest intervals of unequal width often miss) and ``consistent`` (the difference lies
within sqrt(h1^2 + h2^2), h the two intervals' half-widths: the 95% interval of a difference
of independent estimates, to the normal approximation). ``light_rate`` marks each
recording's lowest offered rate per precision, the one the issue compares at: at higher rates
the serving engine's batches and steps are no longer the offline loop's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import wattscope  # noqa: E402
from wattscope import attribution as at  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_check import estimate_dict  # noqa: E402


def offline_rows(path: Path) -> list[dict[str, Any]]:
    rec = wattscope.load(path)
    res, win = rec.results, rec.windows
    rows = []
    for _, r in res[res.ok].iterrows():
        w = win[(win.config_id == r.config_id) & (win.phase == "decode") & (win.role == "measure")]
        per_tok = [(e - r.idle_power_w * d) / t for e, d, t in zip(w.energy_j, w.duration_s, w.tokens)]
        n = len(per_tok)
        mean = statistics.fmean(per_tok)
        est = at.t_estimate(mean, statistics.stdev(per_tok) / math.sqrt(n), n - 1)
        rows.append({"precision": r.precision, "batch": int(r.batch), "rounds": n, "idle_power_w": r.idle_power_w,
                     "j_per_decode_token_above_idle": estimate_dict(est),
                     "j_per_decode_token_with_idle": r.decode_energy_per_token_j, "decode_tok_s": r.decode_tok_s})
    return rows


def serve_phases(check_json: Path) -> list[dict[str, Any]]:
    """The phases of serve_check.py's output (one or more recordings)."""
    out = []
    for run in json.loads(check_json.read_text()):
        for p in run["phases"]:
            fit = p["streamed_fit"]
            if fit is None or None in (fit["j_per_decode_token"][k] for k in ("value", "low", "high")):
                continue  # no fit, or a figure without an interval: nothing to compare
            out.append({"recording": run["recording"], "gpus": run["gpus"], "precision": p["precision"],
                        "offered_rps": p["offered_rps"],
                        "mean_decoding_sequences_per_step": p["mean_decoding_sequences_per_step"],
                        "fit_ok": fit["ok"], "fit_reason": fit["reason"], "j_per_decode_token": fit["j_per_decode_token"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("offline", type=Path)
    ap.add_argument("checks", type=Path, nargs="+")
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    offline = offline_rows(args.offline)
    for o in offline:
        e = o["j_per_decode_token_above_idle"]
        print(f"offline {o['precision']:5} b{o['batch']}: {e['value']:.3f} J/decode tok above idle "
              f"[{e['low']:.3f}, {e['high']:.3f}] over {o['rounds']} rounds "
              f"({o['j_per_decode_token_with_idle']:.3f} with idle, {o['decode_tok_s']:.1f} tok/s)")
    pairs = []
    for path in args.checks:
        phases = serve_phases(path)
        for s in phases:
            same = [o for o in offline if o["precision"] == s["precision"]]
            if not same or s["mean_decoding_sequences_per_step"] is None:
                continue
            o = min(same, key=lambda o: abs(o["batch"] - s["mean_decoding_sequences_per_step"]))
            a, b = s["j_per_decode_token"], o["j_per_decode_token_above_idle"]
            inside = b["low"] <= a["value"] <= b["high"] and a["low"] <= b["value"] <= a["high"]
            half = math.hypot((a["high"] - a["low"]) / 2, (b["high"] - b["low"]) / 2)
            consistent = abs(a["value"] - b["value"]) <= half
            light = s["offered_rps"] == min(x["offered_rps"] for x in phases
                                            if x["precision"] == s["precision"] and x["recording"] == s["recording"])
            pairs.append({"serve": s, "offline_batch": o["batch"], "light_rate": light, "inside": inside,
                          "consistent": consistent})
            print(f"{Path(s['recording']).name} {s['precision']:5} {s['offered_rps']:.2f}/s ({s['mean_decoding_sequences_per_step']:.1f} "
                  f"seqs/step, fit {'ok' if s['fit_ok'] else 'poor'}): {a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"
                  f" vs offline b{o['batch']} {b['value']:.3f}: inside {inside}, consistent {consistent}"
                  f"{'  (light rate)' if light else ''}")
    if args.output:
        args.output.write_text(json.dumps({"offline": offline, "pairs": pairs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
