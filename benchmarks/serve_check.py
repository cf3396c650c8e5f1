"""What a serving recording says about its engine and its attribution (issue 12).

    python benchmarks/serve_check.py REC [REC...] -o OUT.json

Per load phase: the offered rate, requests sent and finished, the engine's logged steps
(steps per second, median step length, mean decoding sequences per step), the card's mean
power against its idle window, and both fits of ``wattscope.serve.analysis``: on the
streamed timestamps (what the report shows) and on the engine's step log (the ground
truth), with whether the two J-per-token figures lie within each other's intervals. The
fits are taken whatever their R2 gate says (``ok`` and ``reason`` are kept beside them),
so a reader can see how far a figure the report withholds was from its check; where no fit
could be made at all (too few intervals, tokens that do not vary) its figures are null and
so is the agreement. ``residual_sd_j`` (the fit's residual standard error per counter
interval) stands beside ``idle_noise_sd_j``, the same spread in the idle window: what the
counter itself scatters.

``per_step_fit`` asks what the report's model leaves out: the same step-log fit with the
number of engine steps in each interval as a third term (J per step: what a step costs
whatever its tokens, e.g. reading the weights), its coefficients with 95% Newey-West
t-intervals (n - 3 degrees of freedom; the idle power's own uncertainty left out; a
negative coefficient has no relative width, as everywhere in wattscope) and R2. Beside the
coefficients it gives all-in figures: each interval's step energy (J per step x steps)
shared between its prefill and decode tokens in proportion to their fitted token energies,
then J per prefill and per decode token over the phase (a delta-method interval from the
three coefficients' covariance, same degrees of freedom).

``stream_step_fit`` is the same three-term fit from what a client of any server sees: the
streamed prefill and decode tokens, as the report counts them, and the steps counted from
the streamed token arrivals. A continuously batching engine hands every running sequence
its token at the end of a step, so arrivals come in bursts, one a step; a burst ends at a
gap longer than ``STEP_GAP_MS`` (arrivals within one in-process step were well under 1 ms
apart on the lent H100; steps lasted 70 ms and more). ``stream_steps`` and ``log_steps``
are the two step counts of the phase and ``steps_corr`` the correlation of their counts
per interval. ``merged_bursts`` checks the rule without a step log: the share of bursts
holding two tokens of one request, which a request's one token a step rules out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import wattscope  # noqa: E402
from wattscope import attribution as at  # noqa: E402
from wattscope.events import EngineSteps, Request, ServePhase  # noqa: E402
from wattscope.serve.analysis import analyse  # noqa: E402


def estimate_dict(e: at.Estimate) -> dict[str, float]:
    """An estimate as JSON: value, interval and relative half-width."""
    return {"value": e.value, "low": e.low, "high": e.high, "relative_half_width": e.half_width}


def _fit(f: at.Fit | None, mean_interval_j: float) -> dict[str, object] | None:
    if f is None:
        return None
    return {"ok": f.ok, "reason": f.reason, "r2": f.r2, "intervals": f.n_intervals,
            "residual_sd_j": f.nrmse * mean_interval_j,
            "j_per_prefill_token": estimate_dict(f.prefill_j_per_token), "j_per_decode_token": estimate_dict(f.decode_j_per_token),
            "measured_j": f.measured_j, "idle_j": f.idle_j, "prefill_j": f.prefill_j, "decode_j": f.decode_j}


# A gap between streamed token arrivals longer than this ends an engine step's burst.
STEP_GAP_MS = 5.0


def _starts_burst(ts: np.ndarray) -> np.ndarray:
    """For sorted arrival times: True where an arrival starts a new burst (the first, and
    any after a gap longer than STEP_GAP_MS)."""
    return np.concatenate(([True], np.diff(ts) > STEP_GAP_MS * 1e6))


def stream_steps(token_ns: list[int], starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Engine steps per interval counted from streamed token arrivals: a step is a burst of
    arrivals, counted where it starts."""
    ts = np.sort(np.asarray(token_ns, dtype=float))
    out = np.zeros(len(starts))
    if not len(ts):
        return out
    bursts = ts[_starts_burst(ts)]
    k = np.searchsorted(starts, bursts, side="right") - 1
    inside = (k >= 0) & (bursts < ends[np.clip(k, 0, None)])
    np.add.at(out, k[inside], 1.0)
    return out


def merged_bursts(token_ns: list[list[int]]) -> float:
    """The share of bursts that hold two tokens of one request. A request gets one token a
    step, so such a burst is two steps run together (STEP_GAP_MS too long for the engine):
    0 means the count is not too low. (Bursts split by a slow client make it too high and
    are not seen here.)"""
    t = np.asarray([x for ts in token_ns for x in ts], dtype=float)
    if not len(t):
        return math.nan
    owner = np.repeat(np.arange(len(token_ns)), [len(ts) for ts in token_ns])
    order = np.argsort(t, kind="stable")
    burst = np.cumsum(_starts_burst(t[order])) - 1
    pairs, count = np.unique(np.column_stack([burst, owner[order]]), axis=0, return_counts=True)
    return len(np.unique(pairs[count > 1, 0])) / (int(burst[-1]) + 1)


def _all_in(beta: np.ndarray, p: np.ndarray, d: np.ndarray, n: np.ndarray) -> np.ndarray:
    """J per prefill and per decode token with each interval's step energy shared by its
    tokens in proportion to their fitted energies (half each where both are fitted at 0)."""
    a, b, c = beta
    tok = a * p + b * d
    to_decode = np.divide(b * d, tok, out=np.full_like(tok, 0.5), where=tok > 0)
    return np.array([(a * p + (1 - to_decode) * c * n).sum() / p.sum(), (b * d + to_decode * c * n).sum() / d.sum()])


def step_fit(p: np.ndarray, d: np.ndarray, n: np.ndarray, energy: np.ndarray, dt_s: np.ndarray,
             idle_w: float) -> dict[str, object] | None:
    """Energy above idle per interval = a x prefill tokens + b x decode tokens + c x steps;
    None where the three do not vary independently (e.g. no decode token in the phase)."""
    y = energy - idle_w * dt_s
    try:
        beta, cov, u = at.ols_hac(np.column_stack([p, d, n]), y)
    except np.linalg.LinAlgError:
        return None
    df = len(y) - 3
    est = {name: estimate_dict(at.t_estimate(float(b), math.sqrt(max(cov[i, i], 0.0)), df))
           for i, (name, b) in enumerate(zip(("j_per_prefill_token", "j_per_decode_token", "j_per_step"), beta))}
    value = _all_in(beta, p, d, n)
    grad = np.empty((2, 3))
    for i in range(3):  # central differences, each step scaled to its coefficient's size or error
        h = np.zeros(3)
        h[i] = 1e-5 * max(abs(beta[i]), math.sqrt(max(cov[i, i], 0.0)), 1e-12)
        grad[:, i] = (_all_in(beta + h, p, d, n) - _all_in(beta - h, p, d, n)) / (2 * h[i])
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", grad, cov, grad), 0.0))
    all_in = {name: estimate_dict(at.t_estimate(float(v), float(e), df))
              for name, v, e in zip(("j_per_prefill_token_all_in", "j_per_decode_token_all_in"), value, se)}
    return {**est, **all_in, "r2": float(1 - u @ u / ((y - y.mean()) @ (y - y.mean()))), "intervals": len(y)}


def _inside(a: at.Estimate, b: at.Estimate) -> bool | None:
    """Each value inside the other's interval; None where either has no interval."""
    if not all(math.isfinite(x) for x in (a.value, a.low, a.high, b.value, b.low, b.high)):
        return None
    return bool(b.low <= a.value <= b.high and a.low <= b.value <= a.high)


def _null_nan(x: object) -> object:
    """Strict JSON: NaN and infinities become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _null_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_null_nan(v) for v in x]
    return x


def check(path: str) -> dict[str, object]:
    rec = wattscope.load(path)
    events = list(rec.events(samples=False))
    steps = np.array([s for e in events if isinstance(e, EngineSteps) for s in e.steps], dtype=np.int64).reshape(-1, 4)
    phases = [e for e in events if isinstance(e, ServePhase)]
    requests = [e for e in events if isinstance(e, Request)]
    gpu = rec.meta.get("gpu", {}).get("index", 0)
    s = rec.samples[rec.samples["gpu"] == gpu]
    idle_w = {p.precision: float(s[(s.t_ns >= p.start_ns) & (s.t_ns < p.end_ns)].power_w.mean())
              for p in phases if p.phase == "idle"}
    t_ns, e_j = s["t_ns"].to_numpy(np.int64), s["energy_j"].to_numpy(float)
    min_s = float(rec.meta.get("serve", {}).get("serve", {}).get("min_interval_s", at.DEFAULT_MIN_INTERVAL_S))
    idle_noise = {}
    for p in phases:
        if p.phase == "idle":
            starts, ends, de = at.counter_intervals(t_ns, e_j, p.start_ns, p.end_ns, min_s)
            dt = (ends - starts) / 1e9
            idle_noise[p.precision] = float(np.std(de - de.sum() / dt.sum() * dt, ddof=1)) if len(de) > 1 else math.nan
    rows = []
    for r in analyse(rec):
        ph = next(p for p in phases if p.phase == "load" and p.precision == r.precision and p.index == r.index)
        mine = steps[(steps[:, 0] >= ph.start_ns) & (steps[:, 0] < ph.end_ns)]
        span = (ph.end_ns - ph.start_ns) / 1e9
        power = s[(s.t_ns >= ph.start_ns) & (s.t_ns < ph.end_ns)].power_w
        starts, ends, de = at.counter_intervals(t_ns, e_j, ph.start_ns, ph.end_ns, min_s)
        dt = (ends - starts) / 1e9
        mean_interval_j = float(de.mean()) if len(de) else math.nan
        row: dict[str, object] = {
            "precision": r.precision, "offered_rps": r.offered_rps, "sent": r.ok + r.failed, "ok": r.ok,
            "failed": r.failed, "span_s": span,
            "steps_per_s": len(mine) / span if len(mine) else math.nan,
            "median_step_ms": float(np.median(mine[:, 1] - mine[:, 0]) / 1e6) if len(mine) else math.nan,
            "mean_decoding_sequences_per_step": float(mine[:, 3].mean()) if len(mine) else math.nan,
            "mean_power_w": float(power.mean()), "idle_power_w": idle_w.get(r.precision, math.nan),
            "idle_noise_sd_j": idle_noise.get(r.precision, math.nan),
            "streamed_fit": _fit(r.fit, mean_interval_j), "steps_fit": _fit(r.steps_fit, mean_interval_j),
        }
        idle = r.fit.idle_w.value
        mine_req = [q for q in requests if q.precision == r.precision and q.rate_index == r.index]
        sp, sd = at.request_activity([at.RequestTimes(q.prompt_tokens, q.sent_ns, q.token_ns) for q in mine_req],
                                     starts, ends)
        n_stream = stream_steps([t for q in mine_req for t in q.token_ns], starts, ends)
        row["stream_steps"] = float(n_stream.sum())
        row["merged_bursts"] = merged_bursts([list(q.token_ns) for q in mine_req])
        if len(starts) > 3:
            row["stream_step_fit"] = step_fit(sp.sum(axis=0), sd.sum(axis=0), n_stream, de, dt, idle)
        if len(mine) and len(starts) > 3:
            steps_log = [tuple(x) for x in mine.tolist()]
            lp, ld = at.step_activity(steps_log, starts, ends)
            n_log, _ = at.step_activity([(a, b, 1, 0) for a, b, _p, _d in steps_log], starts, ends)
            row["log_steps"] = float(n_log.sum())
            varies = n_log.std() > 0 and n_stream.std() > 0
            row["steps_corr"] = float(np.corrcoef(n_log, n_stream)[0, 1]) if varies else math.nan
            row["per_step_fit"] = step_fit(lp, ld, n_log, de, dt, idle)
        if r.steps_fit is not None:
            row["decode_agrees"] = _inside(r.fit.decode_j_per_token, r.steps_fit.decode_j_per_token)
            row["prefill_agrees"] = _inside(r.fit.prefill_j_per_token, r.steps_fit.prefill_j_per_token)
        rows.append(row)
    gpus = [g.get("name") for g in rec.meta.get("gpus", [])]
    return {"recording": path, "gpus": gpus, "packages": rec.meta.get("packages"), "phases": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recordings", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    out = [check(p) for p in a.recordings]
    Path(a.output).write_text(json.dumps(_null_nan(out), indent=1, default=str))
    for run in out:
        print(run["recording"], run["gpus"], run["packages"])
        for r in run["phases"]:  # type: ignore[attr-defined]
            sf, tf = r["streamed_fit"], r["steps_fit"] or {}
            b = sf["j_per_decode_token"]
            bt = (tf.get("j_per_decode_token") or {}).get("value", math.nan)
            print(f"  {r['precision']:5} {r['offered_rps']:5.2f}/s ok {r['ok']:3}/{r['sent']:3}  "
                  f"{r['steps_per_s']:5.1f} steps/s {r['median_step_ms']:4.0f} ms {r['mean_decoding_sequences_per_step']:4.1f} seqs  "
                  f"{r['mean_power_w']:4.0f} W (idle {r['idle_power_w']:4.0f})  "
                  f"J/decode tok {b['value']:.3f} ±{b['relative_half_width']:.1%} (steps {bt:.3f}) r2 {sf['r2']:.2f} "
                  f"{'ok' if sf['ok'] else 'poor'}  agree {r.get('decode_agrees')}/{r.get('prefill_agrees')}")
            for key, label in (("per_step_fit", "steps from the log"), ("stream_step_fit", "steps from the stream")):
                ps = r.get(key)
                if ps:
                    w = {k: v["relative_half_width"] for k, v in ps.items() if isinstance(v, dict)}
                    print(f"        + J/step, {label}: {ps['j_per_step']['value']:.3f} ±{w['j_per_step']:.0%}, "
                          f"J/decode tok {ps['j_per_decode_token']['value']:.3f} ±{w['j_per_decode_token']:.0%}, "
                          f"all-in {ps['j_per_decode_token_all_in']['value']:.3f} ±{w['j_per_decode_token_all_in']:.1%}; "
                          f"J/prefill tok all-in {ps['j_per_prefill_token_all_in']['value']:.4f} "
                          f"±{w['j_per_prefill_token_all_in']:.1%}; r2 {ps['r2']:.2f}")
            if "log_steps" in r:
                print(f"        steps: {r['log_steps']:.0f} logged, {r['stream_steps']:.0f} from the stream "
                      f"(per-interval correlation {r['steps_corr']:.2f}; bursts with a request twice: "
                      f"{r['merged_bursts']:.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
