"""What a serving recording says about its engine and its attribution (issue 12).

    python benchmarks/serve_check.py REC [REC...] -o OUT.json

Per load phase: the offered rate, requests sent and finished, the engine's logged steps
(steps per second, median step length, mean decoding sequences per step), the card's mean
power against its idle window, and the fits of ``wattscope.serve.analysis``: on the
streamed timestamps (what the report shows: tokens and the steps counted from the
stream's bursts) and on the engine's step log (the ground truth), with whether the two
J-per-token figures lie within each other's intervals. ``tokens_only_fit`` is the
streamed fit without the step term (the model before 2026-11-28's second session), to
show what the term adds. The fits are taken whatever their R2 gate says (``ok`` and
``reason`` are kept beside them), so a reader can see how far a figure the report
withholds was from its check; where no fit could be made at all (too few intervals,
tokens that do not vary) its figures are null and so is the agreement.
``residual_sd_j`` (the fit's residual standard error per counter interval) stands beside
``idle_noise_sd_j``, the same spread in the idle window: what the counter itself scatters.
``context_fit`` asks what the report's model leaves out: the streamed fit's three terms
plus a fourth, each decode token's context (its prompt and the tokens before it, in
thousands), spread over its step as the decode tokens are (attention reads the whole
context every step): its R2 beside the report's, J per thousand context tokens with its 95%
Newey-West t-interval (n - 4 degrees of freedom, the idle power's own uncertainty left
out), and the all-in J per prefill and per decode token it gives. A lead, not in the
report.

``counter_power_w`` is the phase's mean power from the counter (``attribution.fit_idle``
over its intervals, with its interval), beside the idle window's (``idle_counter_w``): for
a phase that drew no request (``serve_idle_drift.toml``) it is the idle floor after the
load before it.

``stream_steps`` and ``log_steps`` are the two step counts of the phase and ``steps_corr``
the correlation of their counts per interval; ``merged_bursts`` is the share of bursts
holding two tokens of one request (``attribution.Bursts.merged``), which a request's one
token a step rules out.
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
from wattscope.serve.analysis import analyse, counter_refresh_s  # noqa: E402


def estimate_dict(e: at.Estimate) -> dict[str, float]:
    """An estimate as JSON: value, interval and relative half-width."""
    return {"value": e.value, "low": e.low, "high": e.high, "relative_half_width": e.half_width}


def _fit(f: at.Fit | None, mean_interval_j: float) -> dict[str, object] | None:
    if f is None:
        return None
    return {"ok": f.ok, "reason": f.reason, "r2": f.r2, "intervals": f.n_intervals, "terms": f.terms,
            "residual_sd_j": f.nrmse * mean_interval_j,
            "j_per_prefill_token": estimate_dict(f.prefill_j_per_token), "j_per_decode_token": estimate_dict(f.decode_j_per_token),
            "j_per_step": estimate_dict(f.step_j),
            "measured_j": f.measured_j, "idle_j": f.idle_j, "prefill_j": f.prefill_j, "decode_j": f.decode_j}


def context_fit(requests: list[at.RequestTimes], b: at.Bursts, starts: np.ndarray, ends: np.ndarray,
                energy: np.ndarray, idle_w: float) -> dict[str, object] | None:
    """The four-term fit of ``context_fit`` (module docstring); None where the steps are
    not counted or the terms do not vary apart. Beside its R2 and J per thousand context
    tokens, its all-in J per prefill and per decode token, as the report makes them (each
    step's energy shared by its own prompt and decode work, the context's energy counted
    as decode), with delta-method intervals."""
    steps = at.stream_steps(b)
    if steps is None or not len(starts):
        return None
    step_ctx = np.zeros(len(steps))  # thousands of context tokens decoded in each step
    for r, of in zip(requests, b.of_token):
        if len(of) > 1:
            np.add.at(step_ctx, of[1:], (r.prompt_tokens + np.arange(1, len(of))) / 1000.0)
    p, d = steps.per_interval(starts, ends, steps.prefill_tokens), steps.per_interval(starts, ends, steps.decode_tokens)
    n, ctx = steps.per_interval(starts, ends), steps.per_interval(starts, ends, step_ctx)
    x = np.column_stack([p, d, n, ctx])
    y = energy - idle_w * (ends - starts) / 1e9
    if not at.independent(x):
        return None
    beta, cov, u = at.ols_hac(x, y)
    df = len(y) - 4

    def all_in(c: np.ndarray) -> np.ndarray:
        own_pre = c[0] * steps.prefill_tokens
        own_dec = c[1] * steps.decode_tokens + c[3] * step_ctx
        to_prefill = np.divide(own_pre, own_pre + own_dec, out=np.full(len(steps), 0.5), where=own_pre + own_dec > 0)
        step_pre = c[2] * steps.per_interval(starts, ends, to_prefill)
        return np.array([(c[0] * p + step_pre).sum() / p.sum(), (c[1] * d + c[3] * ctx + c[2] * n - step_pre).sum() / d.sum()])

    value, se = all_in(beta), np.sqrt(np.maximum(np.diag(at.delta_cov(all_in, beta, cov)), 0.0))
    est = at.t_estimate(float(beta[3]), math.sqrt(max(cov[3, 3], 0.0)), df)
    return {"r2": float(1 - u @ u / ((y - y.mean()) @ (y - y.mean()))), "j_per_kilotoken_context": estimate_dict(est),
            "j_per_prefill_token": estimate_dict(at.t_estimate(float(value[0]), float(se[0]), df)),
            "j_per_decode_token": estimate_dict(at.t_estimate(float(value[1]), float(se[1]), df))}


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
    refresh_s = counter_refresh_s(rec.meta)
    cut = {(p.phase, p.precision, p.index): at.counter_intervals(t_ns, e_j, p.start_ns, p.end_ns, min_s, refresh_s)
           for p in phases}
    idle_noise, idle_fits = {}, {}
    for p in phases:
        if p.phase == "idle":
            starts, ends, de = cut[("idle", p.precision, p.index)]
            dt = (ends - starts) / 1e9
            idle_fits[p.precision] = at.fit_idle(de, dt)
            idle_noise[p.precision] = float(np.std(de - de.sum() / dt.sum() * dt, ddof=1)) if len(de) > 1 else math.nan
    rows = []
    for r in analyse(rec):
        ph = next(p for p in phases if p.phase == "load" and p.precision == r.precision and p.index == r.index)
        mine = steps[(steps[:, 0] >= ph.start_ns) & (steps[:, 0] < ph.end_ns)]
        span = (ph.end_ns - ph.start_ns) / 1e9
        power = s[(s.t_ns >= ph.start_ns) & (s.t_ns < ph.end_ns)].power_w
        power_t = s[(s.t_ns >= ph.start_ns) & (s.t_ns < ph.end_ns)].temp_c.dropna()
        starts, ends, de = cut[("load", ph.precision, ph.index)]
        mean_interval_j = float(de.mean()) if len(de) else math.nan
        row: dict[str, object] = {
            "precision": r.precision, "offered_rps": r.offered_rps, "sent": r.ok + r.failed, "ok": r.ok,
            "failed": r.failed, "span_s": span,
            "steps_per_s": len(mine) / span if len(mine) else math.nan,
            "median_step_ms": float(np.median(mine[:, 1] - mine[:, 0]) / 1e6) if len(mine) else math.nan,
            "mean_decoding_sequences_per_step": float(mine[:, 3].mean()) if len(mine) else math.nan,
            "mean_power_w": float(power.mean()), "idle_power_w": idle_w.get(r.precision, math.nan),
            "counter_power_w": estimate_dict(at.fit_idle(de, (ends - starts) / 1e9).watts),
            "idle_counter_w": estimate_dict(idle_fits[r.precision].watts) if r.precision in idle_fits else None,
            "temp_c": [float(power_t.iloc[0]), float(power_t.iloc[-1])] if len(power_t) else None,
            "idle_noise_sd_j": idle_noise.get(r.precision, math.nan),
            "streamed_fit": _fit(r.fit, mean_interval_j), "steps_fit": _fit(r.steps_fit, mean_interval_j),
            "stream_steps": r.stream_steps, "merged_bursts": r.merged_bursts,
        }
        mine_req = [at.RequestTimes(q.prompt_tokens, q.sent_ns, q.token_ns) for q in requests
                    if q.precision == r.precision and q.rate_index == r.index]
        bursts = at.bursts(mine_req)
        if r.precision in idle_fits:
            sp, sd = at.request_activity(mine_req, starts, ends, bursts)
            two = at.fit(at.Intervals(starts, ends, de, sp.sum(axis=0), sd.sum(axis=0)), idle_fits[r.precision])
            row["tokens_only_fit"] = _fit(two, mean_interval_j)
            row["context_fit"] = context_fit(mine_req, bursts, starts, ends, de, idle_fits[r.precision].watts.value)
        if len(mine) and len(starts) > 3:
            n_log = at.logged_steps(mine.tolist()).per_interval(starts, ends)
            counted = at.stream_steps(bursts)
            n_stream = counted.per_interval(starts, ends) if counted is not None else None
            row["log_steps"] = float(len(mine))
            varies = n_stream is not None and n_log.std() > 0 and n_stream.std() > 0
            row["steps_corr"] = float(np.corrcoef(n_log, n_stream)[0, 1]) if varies else math.nan
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
            print(f"  {r['precision']:5} {r['offered_rps']:5.2f}/s ok {r['ok']:3}/{r['sent']:3}  "
                  f"{r['steps_per_s']:5.1f} steps/s {r['median_step_ms']:4.0f} ms {r['mean_decoding_sequences_per_step']:4.1f} seqs  "
                  f"{r['mean_power_w']:4.0f} W (idle {r['idle_power_w']:4.0f})  agree {r.get('decode_agrees')}/{r.get('prefill_agrees')}")
            for key in ("streamed_fit", "steps_fit", "tokens_only_fit"):
                f = r.get(key)
                if f:
                    w = {k: v for k, v in f.items() if isinstance(v, dict)}
                    print(f"        {key:15} J/prefill tok {w['j_per_prefill_token']['value']:.4f} "
                          f"±{w['j_per_prefill_token']['relative_half_width']:.1%}, J/decode tok "
                          f"{w['j_per_decode_token']['value']:.3f} ±{w['j_per_decode_token']['relative_half_width']:.1%}, "
                          f"J/step {w['j_per_step']['value']:.3f}; r2 {f['r2']:.2f} {'ok' if f['ok'] else 'poor'}")
            if "log_steps" in r:
                print(f"        steps: {r['log_steps']:.0f} logged, {r['stream_steps']:.0f} from the stream "
                      f"(per-interval correlation {r['steps_corr']:.2f}; bursts with a request twice: "
                      f"{r['merged_bursts']:.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
