"""A serving recording's figures per precision and offered rate, from what it holds.

Per load phase: the counter intervals of the phase (their edges placed by the card's
measured counter refresh period, from the recording's ``gpu.refresh_s``), the tokens and
steps the streamed timestamps put in each (``attribution.request_activity`` and
``stream_steps``), the fit against the idle window of the same precision, and each
request's prefill and decode energy. Where the engine logged its steps, the same fit on
the logged steps (the ground truth) is kept beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from wattscope import attribution as at
from wattscope.errors import WattscopeError
from wattscope.events import EngineSteps, Request, ServePhase


class ServeAnalysisError(WattscopeError):
    """A recording that is not a serving run."""


@dataclass(frozen=True)
class RequestEnergy:
    request_id: str
    ok: bool
    reason: str
    prompt_tokens: int
    output_tokens: int
    ttft_s: float  # sent to first token
    prefill_j: float
    decode_j: float


@dataclass(frozen=True)
class RateResult:
    precision: str
    index: int
    offered_rps: float
    achieved_rps: float  # requests that finished / the phase's span
    duration_s: float
    ok: int
    failed: int
    fit: at.Fit
    steps_fit: at.Fit | None  # the same fit on the engine's logged steps, where it logged them
    requests: tuple[RequestEnergy, ...]
    stream_steps: float  # engine steps counted from the streamed bursts (NaN where not counted)
    merged_bursts: float  # share of bursts holding two tokens of one request (attribution.Bursts.merged)


def is_serving(meta: dict) -> bool:
    return meta.get("kind") == "serve"


def analyse(rec: object) -> list[RateResult]:
    """Every load phase of a serving recording (a ``wattscope.load`` result)."""
    meta = getattr(rec, "meta", {})
    if not is_serving(meta):
        raise ServeAnalysisError(f"{getattr(rec, 'path', 'recording')}: not a serving recording (made by serve-bench)")
    phases: list[ServePhase] = []
    requests: list[Request] = []
    steps: list[list[int]] = []
    for ev in rec.events(samples=False):  # type: ignore[attr-defined]
        if isinstance(ev, ServePhase):
            phases.append(ev)
        elif isinstance(ev, Request):
            requests.append(ev)
        elif isinstance(ev, EngineSteps):
            steps.extend(ev.steps)
    gpu = meta.get("gpu", {}).get("index", 0)
    s = rec.samples  # type: ignore[attr-defined]
    s = s[s["gpu"] == gpu]
    t, e = s["t_ns"].to_numpy(np.int64), s["energy_j"].to_numpy(float)
    min_s = float(meta.get("serve", {}).get("serve", {}).get("min_interval_s", at.DEFAULT_MIN_INTERVAL_S))
    refresh_s = counter_refresh_s(meta)

    idle: dict[str, at.IdleFit] = {}
    out = []
    for ph in phases:
        starts, ends, de = at.counter_intervals(t, e, ph.start_ns, ph.end_ns, min_s, refresh_s)
        if ph.phase == "idle":
            idle[ph.precision] = at.fit_idle(de, (ends - starts) / 1e9)
            continue
        idle_fit = idle.get(ph.precision, at.IdleFit(at.NO_ESTIMATE, math.nan, 0))
        mine = [r for r in requests if r.precision == ph.precision and r.rate_index == ph.index]
        times = [at.RequestTimes(r.prompt_tokens, r.sent_ns, r.token_ns) for r in mine]
        bursts = at.bursts(times)
        pre, dec = at.request_activity(times, starts, ends, bursts)
        counted = at.stream_steps(bursts)
        f = at.fit(at.Intervals(starts, ends, de, pre.sum(axis=0), dec.sum(axis=0), counted), idle_fit)
        rp, rd = at.split_requests(f, pre, dec)
        mine_steps = [st for st in steps if ph.start_ns <= st[0] < ph.end_ns]
        steps_fit = None
        if mine_steps:
            logged = at.logged_steps(mine_steps)
            steps_fit = at.fit(at.Intervals(starts, ends, de, logged.per_interval(starts, ends, logged.prefill_tokens),
                                            logged.per_interval(starts, ends, logged.decode_tokens), logged), idle_fit)
        span = (ph.end_ns - ph.start_ns) / 1e9
        n_ok = sum(r.ok for r in mine)
        out.append(RateResult(
            ph.precision, ph.index, ph.rate_rps, n_ok / span if span > 0 else math.nan, span, n_ok, len(mine) - n_ok,
            f, steps_fit,
            tuple(
                RequestEnergy(r.request_id, r.ok, r.reason, r.prompt_tokens, len(r.token_ns),
                              (r.token_ns[0] - r.sent_ns) / 1e9 if r.token_ns else math.nan,
                              float(rp[i]) if f.ok else math.nan, float(rd[i]) if f.ok else math.nan)
                for i, r in enumerate(mine)
            ),
            float(len(counted)) if counted is not None else math.nan, bursts.merged,
        ))
    return out


def counter_refresh_s(meta: dict) -> float:
    """The energy counter's refresh period the sampler measured on the recording's card
    (0, a counter always current, where it could not tell)."""
    period = meta.get("gpu", {}).get("refresh_s", {}).get("energy_j")
    return float(period) if isinstance(period, (int, float)) and period > 0 else 0.0


def _est(prefix: str, est: at.Estimate, shown: bool = True) -> dict[str, float]:
    nan = math.nan
    return {prefix: est.value if shown else nan, f"{prefix}_low": est.low if shown else nan,
            f"{prefix}_high": est.high if shown else nan}


def _with_interval(*names: str) -> list[str]:
    return [c for n in names for c in (n, f"{n}_low", f"{n}_high")]


# Named once, so a recording without a load phase still exports its header.
RATE_COLUMNS = [
    "precision", "offered_rps", "achieved_rps", "duration_s", "requests_ok", "requests_failed",
    "fit_ok", "fit_reason", "intervals", "fit_terms", "r2", "nrmse", "steps", "merged_bursts",
    *_with_interval("prefill_j_per_token", "decode_j_per_token", "j_per_step", "idle_w", "idle_share"),
    "measured_j", "idle_j", "prefill_j", "decode_j",
    *_with_interval("steps_prefill_j_per_token", "steps_decode_j_per_token"),
    *_with_interval("prefill_vs_fp16", "decode_vs_fp16"),
]
BASELINE = "fp16"  # the precision the others' J per token are set against, at the same rate, as in sweeps


def baseline_of(r: RateResult, results: list[RateResult]) -> RateResult | None:
    """The FP16 phase at ``r``'s offered rate (its rate index), if the run has one."""
    return next((b for b in results if b.precision == BASELINE and b.index == r.index), None)


def vs_baseline(r: RateResult, results: list[RateResult]) -> tuple[at.Estimate, at.Estimate]:
    """This row's J per prefill and per decode token over the FP16 row's at the same
    offered rate (``attribution.ratio_estimate``: two independent fits); 1 for the FP16
    row itself, none where there is no FP16 row or either fit is poor."""
    base = baseline_of(r, results)
    if base is None or not (base.fit.ok and r.fit.ok):
        return at.NO_ESTIMATE, at.NO_ESTIMATE
    if base is r:
        one = at.Estimate(1.0, math.nan, math.nan)
        return one, one
    dof_a = at.token_dof(base.fit.n_intervals, base.fit.terms)
    dof_b = at.token_dof(r.fit.n_intervals, r.fit.terms)
    return (at.ratio_estimate(base.fit.prefill_j_per_token, dof_a, r.fit.prefill_j_per_token, dof_b),
            at.ratio_estimate(base.fit.decode_j_per_token, dof_a, r.fit.decode_j_per_token, dof_b))


def rates_frame(results: list[RateResult]) -> pd.DataFrame:
    """One row per precision and offered rate; a poor fit's per-token figures are blank
    (``fit_reason`` says why), its measured energy is still there. ``fit_terms`` is 3 where
    the fit had the steps counted from the stream (``steps`` of them), 2 where it did not;
    a reader recovers a figure's standard error from its interval with
    ``attribution.token_dof(intervals, fit_terms)``. ``prefill_vs_fp16`` and
    ``decode_vs_fp16`` are the J per token over FP16's at the same rate
    (``vs_baseline``)."""
    rows = []
    for r in results:
        f, sf = r.fit, r.steps_fit
        pre_vs, dec_vs = vs_baseline(r, results)
        rows.append({
            "precision": r.precision, "offered_rps": r.offered_rps, "achieved_rps": r.achieved_rps,
            "duration_s": r.duration_s, "requests_ok": r.ok, "requests_failed": r.failed,
            "fit_ok": f.ok, "fit_reason": f.reason, "intervals": f.n_intervals, "fit_terms": f.terms,
            "r2": f.r2, "nrmse": f.nrmse, "steps": r.stream_steps, "merged_bursts": r.merged_bursts,
            **_est("prefill_j_per_token", f.prefill_j_per_token, f.ok),
            **_est("decode_j_per_token", f.decode_j_per_token, f.ok),
            **_est("j_per_step", f.step_j, f.ok),
            **_est("idle_w", f.idle_w),
            **_est("idle_share", f.idle_share, f.ok),
            "measured_j": f.measured_j, "idle_j": f.idle_j, "prefill_j": f.prefill_j, "decode_j": f.decode_j,
            **_est("steps_prefill_j_per_token", sf.prefill_j_per_token if sf else at.NO_ESTIMATE, bool(sf and sf.ok)),
            **_est("steps_decode_j_per_token", sf.decode_j_per_token if sf else at.NO_ESTIMATE, bool(sf and sf.ok)),
            **_est("prefill_vs_fp16", pre_vs), **_est("decode_vs_fp16", dec_vs),
        })
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=RATE_COLUMNS)


def requests_frame(results: list[RateResult]) -> pd.DataFrame:
    """One row per request: its tokens, time to first token and its energy parts."""
    rows = [
        {"precision": r.precision, "offered_rps": r.offered_rps, **asdict(q)}
        for r in results for q in r.requests
    ]
    cols = ["precision", "offered_rps", *RequestEnergy.__dataclass_fields__]
    return pd.DataFrame(rows, columns=cols)
