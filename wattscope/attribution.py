"""Phase energy under serving load: the energy counter's increments explained by the work.

A server that batches continuously mixes prefill and decode in the same steps, so no
window holds one phase alone. Instead, the run is cut into intervals between energy
counter readings, and each interval's energy is explained by what the server did in it::

    E_i = idle_W * dt_i + a * P_i + b * D_i + e_i

with ``P_i`` the prompt tokens processed (prefill) and ``D_i`` the tokens produced after
each request's first (decode) in interval i. ``a`` and ``b`` are J per prefill and per
decode token.

The regression, and why:

* **Idle is measured, not fitted.** ``idle_W`` comes from an idle window (the model
  loaded, no requests) recorded before the load (``fit_idle``: the slope of counter energy
  on time over its intervals). Fitting it as a free term would set it against ``dt``, which
  is almost the same in every interval, so it would be nearly collinear with the intercept
  of the token terms and take their variance; measured, it is the card's own floor, and
  everything above it is what the tokens cost. Its uncertainty is carried into ``a`` and
  ``b`` (the idle estimate comes from different intervals, so the two variances add:
  ``V = V_tokens + g g' var(idle_W)`` with ``g = (X'X)^-1 X' dt``).
* **Ordinary least squares** of ``E_i - idle_W dt_i`` on ``(P_i, D_i)`` without an
  intercept. Non-negativity is not imposed but checked: a coefficient whose interval
  reaches zero makes the fit poor.
* **Newey-West (HAC) standard errors**, Bartlett kernel, lag ``floor(4 (n/100)^(2/9))``
  (at least 1), with the small-sample factor n/(n-k) and Student's t(n-k). The interval
  errors are autocorrelated: a counter reading lags the counter update by up to a sampler
  period, so energy moves between neighbouring intervals (negative lag-1 correlation),
  and clocks and temperature drift over many intervals (positive correlation). HC3
  assumes independent errors; a block bootstrap would handle the dependence too but is
  random and slow, and Newey-West is its analytic, deterministic counterpart.

**Goodness of fit.** The fit is *poor*, and no figure is reported, when any of:
fewer than ``MIN_INTERVALS`` intervals; the token terms explain less than ``MIN_R2`` of
the variation of the energy above idle (R^2 of ``E_i - idle_W dt_i`` about its mean: the
load's own fluctuations, which Poisson arrivals provide, must show in the counter);
a coefficient's 95% interval does not lie above zero. The residual standard error as a
fraction of the mean interval energy (``nrmse``) is reported beside it.

**Sum rule.** The attributed parts sum to the measured energy exactly. Each interval's
residual ``e_i`` goes to the tokens of that interval in proportion to their fitted
energy (``a P_i`` and ``b D_i``); an interval whose tokens are fitted at no energy (none ran, or
a coefficient came out negative in a poor fit) gives all its energy above idle to idle.
A request's prefill (decode) part is its share of its intervals' attributed prefill
(decode) energy, by its tokens there.

**Activity from the streamed timestamps** (``request_activity``): a request's prompt
tokens are spread evenly over its span from sending to its first token (the server
admitted and prefilled it somewhere in there); each token after the first counts as one
decode token at the time it arrived. When the engine logs its steps, ``step_activity``
gives the ground truth the same way.

Numpy only; no pandas, so the live session and tests can call it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from wattscope.stats import CONFIDENCE, relative_half_width, t_quantile

MIN_INTERVALS = 20
MIN_R2 = 0.8  # of the energy above idle, explained by the token terms
DEFAULT_MIN_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Estimate:
    """A value and its 95% interval (NaN ends when there is none)."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Relative half-width of the interval (NaN without one)."""
        return relative_half_width(self.value, self.low, self.high)


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class Intervals:
    """Consecutive intervals between energy-counter readings and the work inside them.
    ``energy_j`` is the counter's increment; the token arrays are per interval."""

    start_ns: np.ndarray
    end_ns: np.ndarray
    energy_j: np.ndarray
    prefill_tokens: np.ndarray
    decode_tokens: np.ndarray

    @property
    def dt_s(self) -> np.ndarray:
        return (self.end_ns - self.start_ns) / 1e9

    def __len__(self) -> int:
        return len(self.energy_j)


def counter_intervals(
    t_ns: np.ndarray, energy_j: np.ndarray, start_ns: int, end_ns: int, min_interval_s: float = DEFAULT_MIN_INTERVAL_S
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges and energies of the intervals inside [start_ns, end_ns]: between counter
    readings that changed (a repeated value is the same update read twice), merged until
    each lasts at least ``min_interval_s`` (a short interval is mostly edge error).
    Returns (starts, ends, energies)."""
    t = np.asarray(t_ns, dtype=np.int64)
    e = np.asarray(energy_j, dtype=float)
    keep = ~np.isnan(e) & (t >= start_ns) & (t <= end_ns)
    t, e = t[keep], e[keep]
    if len(t):
        changed = np.concatenate(([True], np.diff(e) != 0))
        t, e = t[changed], e[changed]
    min_ns = min_interval_s * 1e9
    edges = [0] if len(t) else []
    for j in range(1, len(t)):
        if t[j] - t[edges[-1]] >= min_ns:
            edges.append(j)
    idx = np.asarray(edges, dtype=int)
    if len(idx) < 2:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=float)
    return t[idx[:-1]], t[idx[1:]], np.diff(e[idx])


@dataclass(frozen=True)
class RequestTimes:
    """What the driver saw of one request: when it was sent, when each token arrived."""

    prompt_tokens: int
    sent_ns: int
    token_ns: Sequence[int]  # arrival of each streamed token; the first is the prefill's


def _overlap(a0: np.ndarray, a1: np.ndarray, b0: float, b1: float) -> np.ndarray:
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)


def request_activity(
    requests: Sequence[RequestTimes], starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per request and interval: prefill tokens (the prompt spread evenly from sending to
    the first token) and decode tokens (tokens after the first, at their arrival).
    Returns two arrays of shape (requests, intervals). Intervals are half-open [start, end)."""
    n, m = len(requests), len(starts)
    prefill = np.zeros((n, m))
    decode = np.zeros((n, m))
    s0, s1 = np.asarray(starts, dtype=float), np.asarray(ends, dtype=float)
    for r, req in enumerate(requests):
        if not req.token_ns:
            continue
        first = float(req.token_ns[0])
        span = first - req.sent_ns
        if span > 0:
            prefill[r] = req.prompt_tokens * _overlap(s0, s1, req.sent_ns, first) / span
        else:  # first token at the sending instant: all in the interval that holds it
            prefill[r] = req.prompt_tokens * ((s0 <= first) & (first < s1))
        later = np.asarray(req.token_ns[1:], dtype=float)
        if len(later):
            k = np.searchsorted(s0, later, side="right") - 1
            inside = (k >= 0) & (later < s1[np.clip(k, 0, None)])
            np.add.at(decode[r], k[inside], 1.0)
    return prefill, decode


def step_activity(
    steps: Iterable[tuple[int, int, int, int]], starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per interval prefill and decode tokens from an engine's logged steps
    ``(start_ns, end_ns, prefill_tokens, decode_tokens)``, each step's tokens spread
    evenly over its span."""
    s0, s1 = np.asarray(starts, dtype=float), np.asarray(ends, dtype=float)
    prefill, decode = np.zeros(len(s0)), np.zeros(len(s0))
    for a, b, p, d in steps:
        if b > a:
            w = _overlap(s0, s1, a, b) / (b - a)
        else:
            w = ((s0 <= a) & (a < s1)).astype(float)
        prefill += p * w
        decode += d * w
    return prefill, decode


def hac_lag(n: int) -> int:
    """Newey-West's rule of thumb for the Bartlett kernel's lag."""
    return max(1, int(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0))))


def ols_hac(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OLS coefficients, their Newey-West covariance and the residuals."""
    n, k = x.shape
    xtx_inv = np.linalg.inv(x.T @ x)
    beta = xtx_inv @ x.T @ y
    u = y - x @ beta
    g = x * u[:, None]
    s = g.T @ g
    for lag in range(1, hac_lag(n) + 1):
        w = 1.0 - lag / (hac_lag(n) + 1.0)
        c = g[lag:].T @ g[:-lag]
        s += w * (c + c.T)
    cov = xtx_inv @ s @ xtx_inv * (n / max(n - k, 1))
    return beta, cov, u


def t_estimate(value: float, se: float, df: int) -> Estimate:
    """A value with its 95% Student-t interval from a standard error (no interval without
    degrees of freedom or a finite error)."""
    if not (df > 0 and math.isfinite(se)):
        return Estimate(value, math.nan, math.nan)
    half = t_quantile(0.5 + CONFIDENCE / 2.0, df) * se
    return Estimate(value, value - half, value + half)


def token_dof(n_intervals: int) -> int:
    """Degrees of freedom of the token fit's t-intervals: the intervals less its two
    coefficients. A reader of a fit's interval recovers its standard error with it."""
    return n_intervals - 2


@dataclass(frozen=True)
class IdleFit:
    """Idle power from an idle window's counter intervals, and its standard error."""

    watts: Estimate
    se_w: float
    n_intervals: int


def fit_idle(energy_j: np.ndarray, dt_s: np.ndarray) -> IdleFit:
    """Idle power: the slope of interval energy on interval length (no intercept), so it
    equals total energy / total time; Newey-West standard error as for the load fit."""
    e, dt = np.asarray(energy_j, dtype=float), np.asarray(dt_s, dtype=float)
    n = len(e)
    if n < 2:
        value = float(e.sum() / dt.sum()) if n else math.nan
        return IdleFit(Estimate(value, math.nan, math.nan), math.nan, n)
    beta, cov, _ = ols_hac(dt[:, None], e)
    se = math.sqrt(max(cov[0, 0], 0.0))
    return IdleFit(t_estimate(float(beta[0]), se, n - 1), se, n)


@dataclass(frozen=True)
class Fit:
    """The attribution of one load span. When ``ok`` is False, ``reason`` says why the fit
    is poor and the per-token figures must not be reported. ``measured_j`` always equals
    ``idle_j + prefill_j + decode_j``."""

    ok: bool
    reason: str
    n_intervals: int
    hac_lag: int
    prefill_j_per_token: Estimate
    decode_j_per_token: Estimate
    idle_w: Estimate
    idle_share: Estimate  # idle_j / measured_j (idle power x time, plus intervals fitted at no token energy)
    r2: float  # of the energy above idle, about its mean
    nrmse: float  # residual standard error / mean interval energy
    measured_j: float
    idle_j: float
    prefill_j: float
    decode_j: float
    interval_prefill_j: np.ndarray  # attributed per interval (residual included)
    interval_decode_j: np.ndarray


def fit(intervals: Intervals, idle: IdleFit) -> Fit:
    """Fit a and b over ``intervals`` with idle power fixed at ``idle`` (module docstring)."""
    n = len(intervals)
    e = intervals.energy_j.astype(float)
    dt = intervals.dt_s.astype(float)
    p = intervals.prefill_tokens.astype(float)
    d = intervals.decode_tokens.astype(float)
    measured = float(e.sum())
    idle_w = idle.watts.value
    empty = np.zeros(n)
    poor = lambda why: Fit(  # noqa: E731 - one place builds every poor fit
        False, why, n, hac_lag(max(n, 1)), NO_ESTIMATE, NO_ESTIMATE, idle.watts, NO_ESTIMATE, math.nan, math.nan,
        measured, measured, 0.0, 0.0, empty, empty,
    )
    if not math.isfinite(idle_w):
        return poor("no idle power measured")
    if n < MIN_INTERVALS:
        return poor(f"{n} counter intervals; at least {MIN_INTERVALS} are needed")
    x = np.column_stack([p, d])
    if np.linalg.matrix_rank(x) < 2:
        return poor("prefill and decode tokens do not vary independently over the intervals")
    y = e - idle_w * dt
    beta, cov, u = ols_hac(x, y)
    g = np.linalg.inv(x.T @ x) @ x.T @ dt
    cov = cov + np.outer(g, g) * idle.se_w**2
    df = token_dof(n)
    a = t_estimate(float(beta[0]), math.sqrt(max(cov[0, 0], 0.0)), df)
    b = t_estimate(float(beta[1]), math.sqrt(max(cov[1, 1], 0.0)), df)
    nrmse = math.sqrt(float(u @ u) / df) / float(e.mean())
    spread = float((y - y.mean()) @ (y - y.mean()))
    r2 = 1.0 - float(u @ u) / spread if spread > 0 else math.nan
    idle_fit_j = idle_w * float(dt.sum())

    # The sum rule: each interval's residual to its tokens, by their fitted energy.
    fa, fb = beta[0] * p, beta[1] * d
    fitted = fa + fb
    active = fitted > 0
    scale = np.where(active, 1.0 + u / np.where(active, fitted, 1.0), 0.0)
    pre_i, dec_i = fa * scale, fb * scale
    # An interval whose tokens are fitted at no energy (none ran, or a coefficient came
    # out negative in a poor fit) has all its energy above idle counted as idle.
    idle_j = idle_fit_j + float(y[~active].sum())
    prefill_j, decode_j = float(pre_i.sum()), float(dec_i.sum())
    # The idle share is the idle part of the sum rule, so it and the token parts make 100%;
    # its uncertainty is the idle power's, over the span.
    share = t_estimate(idle_j / measured, idle.se_w * float(dt.sum()) / measured, idle.n_intervals - 1)

    reasons = []
    if not r2 >= MIN_R2:
        reasons.append(f"the tokens explain {r2:.0%} of the energy above idle (at least {MIN_R2:.0%} needed)")
    for name, est in (("J per prefill token", a), ("J per decode token", b)):
        if not est.low > 0:
            reasons.append(f"the interval of {name} reaches zero")
    return Fit(
        ok=not reasons,
        reason="; ".join(reasons),
        n_intervals=n,
        hac_lag=hac_lag(n),
        prefill_j_per_token=a,
        decode_j_per_token=b,
        idle_w=idle.watts,
        idle_share=share,
        r2=r2,
        nrmse=nrmse,
        measured_j=measured,
        idle_j=idle_j,
        prefill_j=prefill_j,
        decode_j=decode_j,
        interval_prefill_j=pre_i,
        interval_decode_j=dec_i,
    )


def split_requests(f: Fit, prefill: np.ndarray, decode: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each request's prefill and decode energy (J): its share, by tokens, of every
    interval's attributed prefill and decode energy. ``prefill``/``decode`` are the
    (requests, intervals) arrays of ``request_activity``."""
    def share(tokens: np.ndarray, per_interval: np.ndarray) -> np.ndarray:
        total = tokens.sum(axis=0)
        w = np.divide(per_interval, total, out=np.zeros_like(per_interval), where=total > 0)
        return np.asarray(tokens @ w)

    return share(prefill, f.interval_prefill_j), share(decode, f.interval_decode_j)


def energy_shares(f: Fit) -> tuple[float, float, float]:
    """Idle, prefill and decode parts of the measured energy as fractions of it (they sum
    to 1 by the sum rule); NaN when the fit is poor, as its other figures are."""
    if not (f.ok and f.measured_j > 0):
        return (math.nan, math.nan, math.nan)
    return (f.idle_share.value, f.prefill_j / f.measured_j, f.decode_j / f.measured_j)
