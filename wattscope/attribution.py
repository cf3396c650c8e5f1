"""Phase energy under serving load: the energy counter's increments explained by the work.

A server that batches continuously mixes prefill and decode in the same steps, so no
window holds one phase alone. Instead, the run is cut into intervals between energy
counter readings, and each interval's energy is explained by what the server did in it::

    E_i = idle_W * dt_i + a * P_i + b * D_i + c * N_i + e_i

with ``P_i`` the prompt tokens processed (prefill), ``D_i`` the tokens produced after each
request's first (decode) and ``N_i`` the engine steps run in interval i. ``a`` and ``b``
are J per prefill and per decode token; ``c`` is J per step, what a step costs whatever
its tokens (reading the weights once, launching its kernels), which a continuously
batching engine pays once for all the sequences of the step. Without it, ``b`` would hold
the step's cost spread over however many sequences shared it, so it would move with the
batch from interval to interval, which is error the fit cannot explain. Where the steps
cannot be counted (``Intervals.steps`` is None) the term is left out.

**The figures reported** are J per prefill and per decode token *all in*: each step's
energy ``c`` goes to that step's own prompt and decode tokens in proportion to their
fitted energies ``a P_j`` and ``b D_j`` (half each where both are fitted at zero or less),
and the figure is the phase's prefill (decode) energy over its prefill (decode) tokens. So
they answer "what does a token cost under this load", comparable with the offline
protocol's energy per token and with the two-term fit. Their intervals come from the
coefficients' covariance by the delta method (numerical gradient). ``c`` is reported
beside them.

The regression, and why:

* **Idle is measured, not fitted.** ``idle_W`` comes from an idle window (the model
  loaded, no requests) recorded before the load (``fit_idle``: the slope of counter energy
  on time over its intervals). Fitting it as a free term would set it against ``dt``, which
  is almost the same in every interval, so it would be nearly collinear with the intercept
  of the token terms and take their variance; measured, it is the card's own floor, and
  everything above it is what the work costs. Its uncertainty is carried into the
  coefficients (the idle estimate comes from different intervals, so the two variances
  add: ``V = V_work + g g' var(idle_W)`` with ``g = (X'X)^-1 X' dt``).
* **Ordinary least squares** of ``E_i - idle_W dt_i`` on ``(P_i, D_i[, N_i])`` without an
  intercept. Non-negativity is not imposed but checked: a per-token figure whose interval
  reaches zero makes the fit poor.
* **Newey-West (HAC) standard errors**, Bartlett kernel, lag ``floor(4 (n/100)^(2/9))``
  (at least 1), with the small-sample factor n/(n-k) and Student's t(n-k). The interval
  errors are autocorrelated: energy moves between neighbouring intervals at their edges
  (negative lag-1 correlation), and clocks and temperature drift over many intervals
  (positive correlation). HC3 assumes independent errors; a block bootstrap would handle
  the dependence too but is random and slow, and Newey-West is its analytic,
  deterministic counterpart.

**Goodness of fit.** The fit is *poor*, and no figure is reported, when any of:
fewer than ``MIN_INTERVALS`` intervals; the terms explain less than ``MIN_R2`` of the
variation of the energy above idle (R^2 of ``E_i - idle_W dt_i`` about its mean: the
load's own fluctuations, which Poisson arrivals provide, must show in the counter);
a per-token figure's 95% interval does not lie above zero. The residual standard error as
a fraction of the mean interval energy (``nrmse``) is reported beside it. Terms that do not
vary apart from each other (``independent``: the smallest singular value of the design,
its columns scaled to unit length, under ``MIN_INDEPENDENCE`` of the largest) cannot be
told apart: without the steps the fit is poor; the step term is left out instead.

**Sum rule.** The attributed parts sum to the measured energy exactly. Each interval's
fitted energy above idle is its prefill part (``a P_i`` and its steps' shares of their
energy) plus its decode part; its residual ``e_i`` goes to the two in proportion to them. An interval
fitted at no energy (nothing ran, or a coefficient came out negative in a poor fit) gives
all its energy above idle to idle. A request's prefill (decode) part is its share of its
intervals' attributed prefill (decode) energy, by its tokens there.

**When the work happened, from the streamed timestamps** (``request_activity``,
``stream_steps``). A continuously batching engine hands every running sequence its token
at the end of a step, so token arrivals come in bursts, one a step; a burst ends at a gap
longer than ``STEP_GAP_NS``. Each burst is one step, which ran from the burst before it
(its last arrival) to this burst's first arrival; a step begins when its requests were
admitted, so never before the sending of any request whose first token it returns (after
an idle spell, the latest of them). The work whose tokens a burst returns is spread
evenly over its step: a request's prompt over the step of its first token (the prefill
step), each later token over its own step. (An engine that prefills a long prompt in
chunks over several steps has its earlier chunks placed in the last one, a few steps
late.) ``Bursts.merged`` checks the burst rule without an engine log: a request gets one
token a step, so a burst holding two tokens of one request is two steps run together
(steps faster than the gap, or a server that sends tokens in batches). Above
``MAX_MERGED_BURSTS`` the steps are not counted and the fit leaves out their term.
When the engine logs its steps, ``logged_steps`` gives the ground truth the same way.

**Interval edges.** The counter refreshes on its own clock (every ~100 ms on an
H100/H200) and is read more often or less often than that: a refresh seen first at read
``t`` happened after the read before it and at most one refresh period before ``t``. The
edge is put in the middle of that span, ``t - min(t - t_prev, refresh) / 2``: unbiased, and
half the timing error of putting it at the read. Only a reading whose value differs from
the one before shows a refresh, whatever window is asked for.

Numpy only; no pandas, so the live session and tests can call it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from wattscope.stats import CONFIDENCE, relative_half_width, t_quantile

MIN_INTERVALS = 20
MIN_R2 = 0.8  # of the energy above idle, explained by the fitted terms
DEFAULT_MIN_INTERVAL_S = 0.5
STEP_GAP_NS = 5_000_000  # a gap between token arrivals longer than this ends a step's burst
MAX_MERGED_BURSTS = 0.01  # above this share of merged bursts the steps are not counted
MIN_INDEPENDENCE = 1e-3  # of the design's singular values, smallest over largest (columns at unit length)


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
class Steps:
    """An engine's steps: when each ran and the prefill tokens and decode tokens it did
    (from its log, or counted from the stream: ``stream_steps``)."""

    begin_ns: np.ndarray
    end_ns: np.ndarray
    prefill_tokens: np.ndarray
    decode_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.begin_ns)

    def per_interval(self, starts: np.ndarray, ends: np.ndarray, amounts: np.ndarray | None = None) -> np.ndarray:
        """``amounts`` per step (default: one) spread over each step, summed per interval."""
        w = np.ones(len(self)) if amounts is None else amounts
        return spread(self.begin_ns, self.end_ns, w, starts, ends)


def logged_steps(rows: Iterable[Sequence[int]]) -> Steps:
    """An engine's logged steps ``(start_ns, end_ns, prefill_tokens, decode_tokens)``."""
    arr = np.asarray(list(rows), dtype=np.int64).reshape(-1, 4)
    return Steps(arr[:, 0], arr[:, 1], arr[:, 2].astype(float), arr[:, 3].astype(float))


@dataclass(frozen=True)
class Intervals:
    """Consecutive intervals between energy-counter readings and the work inside them.
    ``energy_j`` is the counter's increment; the token arrays are per interval; ``steps``
    is None where the engine's steps could not be counted."""

    start_ns: np.ndarray
    end_ns: np.ndarray
    energy_j: np.ndarray
    prefill_tokens: np.ndarray
    decode_tokens: np.ndarray
    steps: Steps | None = None

    @property
    def dt_s(self) -> np.ndarray:
        return (self.end_ns - self.start_ns) / 1e9

    def __len__(self) -> int:
        return len(self.energy_j)


def counter_intervals(
    t_ns: np.ndarray, energy_j: np.ndarray, start_ns: int, end_ns: int,
    min_interval_s: float = DEFAULT_MIN_INTERVAL_S, refresh_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges and energies of the intervals inside [start_ns, end_ns]: between counter
    readings that changed (a repeated value is the same update read twice), merged until
    each lasts at least ``min_interval_s`` (a short interval is mostly edge error). Each
    edge sits where the refresh it saw most likely happened: halfway back to the read
    before, or half a refresh period (``refresh_s``, 0 for a counter that is always
    current) if that is nearer (module docstring). Returns (starts, ends, energies)."""
    t = np.asarray(t_ns, dtype=np.int64)
    e = np.asarray(energy_j, dtype=float)
    read = ~np.isnan(e)
    t, e = t[read], e[read]
    # A reading shows a refresh where its value differs from the reading before (the first
    # reading's refresh is of unknown age: its edge stays at the read).
    prev = np.concatenate((t[:1], t[:-1]))
    changed = np.concatenate(([True], np.diff(e) != 0))
    keep = changed & (t >= start_ns) & (t <= end_ns)
    t, e, prev = t[keep], e[keep], prev[keep]
    edge = t - np.minimum(t - prev, int(refresh_s * 1e9)) // 2
    min_ns = min_interval_s * 1e9
    edges = [0] if len(t) else []
    for j in range(1, len(t)):
        if t[j] - t[edges[-1]] >= min_ns:
            edges.append(j)
    idx = np.asarray(edges, dtype=int)
    if len(idx) < 2:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=float)
    return edge[idx[:-1]], edge[idx[1:]], np.diff(e[idx])


@dataclass(frozen=True)
class RequestTimes:
    """What the driver saw of one request: when it was sent, when each token arrived."""

    prompt_tokens: int
    sent_ns: int
    token_ns: Sequence[int]  # arrival of each streamed token; the first is the prefill's


def spread(a: np.ndarray, b: np.ndarray, w: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Amounts ``w`` spread evenly over spans [a, b], summed per interval [start, end); a
    span of no length puts its amount in the interval that holds its instant. Linear in
    the spans and intervals: through the running integral of the amounts' density, read
    at the interval edges (times taken from the first start, so the sums keep their
    precision)."""
    if not len(starts) or not len(a):
        return np.zeros(len(starts))
    origin = np.asarray(starts).ravel()[0]

    def rel(x: np.ndarray) -> np.ndarray:
        # integer clocks are taken from the origin before they become floats
        x = np.asarray(x).ravel()
        return (x - origin).astype(float) if x.dtype.kind in "iu" else x.astype(float) - float(origin)

    a, b, s0, s1 = rel(a), rel(b), rel(starts), rel(ends)
    w = np.asarray(w, dtype=float).ravel()
    point = b <= a
    ramp = ~point
    slope = w[ramp] / (b[ramp] - a[ramp])

    def ramps(x: np.ndarray, at: np.ndarray, k: np.ndarray) -> np.ndarray:
        # sum over spans of k * max(x - at, 0), for every x
        order = np.argsort(at)
        at, k = at[order], k[order]
        c1 = np.concatenate(([0.0], np.cumsum(k)))
        c2 = np.concatenate(([0.0], np.cumsum(k * at)))
        j = np.searchsorted(at, x, side="left")
        return x * c1[j] - c2[j]

    def total(x: np.ndarray) -> np.ndarray:
        # the amount done before x
        lin = ramps(x, a[ramp], slope) - ramps(x, b[ramp], slope)
        pts = np.sort(a[point])
        cum = np.concatenate(([0.0], np.cumsum(w[point][np.argsort(a[point])])))
        return lin + cum[np.searchsorted(pts, x, side="left")]

    return np.asarray(total(s1) - total(s0))


@dataclass(frozen=True)
class Bursts:
    """The engine steps a client sees: bursts of token arrivals, one a step (module
    docstring). Per burst: when its step began and when its first token arrived; per
    streamed token, in ``requests`` order, the burst it came in. ``merged`` is the share of
    bursts that hold two tokens of one request (NaN without any burst): a request gets one
    token a step, so such a burst is two steps run together."""

    begin_ns: np.ndarray
    first_ns: np.ndarray
    of_token: list[np.ndarray]
    prefill_tokens: np.ndarray  # prompt tokens of the requests whose first token came in it
    decode_tokens: np.ndarray  # later tokens in it
    merged: float


def bursts(requests: Sequence[RequestTimes]) -> Bursts:
    """The bursts of the requests' token arrivals and each burst's step (module docstring)."""
    counts = [len(r.token_ns) for r in requests]
    t = np.asarray([x for r in requests for x in r.token_ns], dtype=np.int64)
    # When each token's work could have begun: a later token after the token before it,
    # a first token at its sending.
    could = np.asarray([x for r in requests for x in ([r.sent_ns, *r.token_ns[:-1]] if r.token_ns else [])],
                       dtype=np.int64)
    if not len(t):
        empty = np.array([], dtype=np.int64)
        return Bursts(empty, empty, [empty for _ in requests], empty.astype(float), empty.astype(float), math.nan)
    order = np.argsort(t, kind="stable")
    ts = t[order]
    new = np.concatenate(([True], np.diff(ts) > STEP_GAP_NS))
    starts = np.flatnonzero(new)
    first, last = ts[starts], np.maximum.reduceat(ts, starts)
    burst_sorted = np.cumsum(new) - 1
    latest = np.maximum.reduceat(could[order], starts)
    # A step begins when the step before it ended, and not before the requests it admitted
    # were sent (after an idle spell, the latest of them); a later token's could-begin is
    # the token before it, which the burst before already returned.
    begin = np.maximum(np.concatenate(([latest[0]], last[:-1])), latest)
    begin = np.minimum(begin, first)
    of = np.empty(len(t), dtype=np.int64)
    of[order] = burst_sorted
    split = np.split(of, np.cumsum(counts)[:-1])
    prefill, decode = np.zeros(len(first)), np.zeros(len(first))
    merged = np.zeros(len(first), dtype=bool)
    for r, o in zip(requests, split):
        if len(o):
            prefill[o[0]] += r.prompt_tokens
            np.add.at(decode, o[1:], 1.0)
            merged[o[1:][o[1:] == o[:-1]]] = True
    return Bursts(begin, first, split, prefill, decode, float(merged.mean()))


def request_activity(
    requests: Sequence[RequestTimes], starts: np.ndarray, ends: np.ndarray, b: Bursts | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per request and interval: prefill tokens (the prompt spread over the step of its
    first token) and decode tokens (each later token spread over its own step). Returns
    two arrays of shape (requests, intervals). Intervals are half-open [start, end)."""
    b = bursts(requests) if b is None else b
    n, m = len(requests), len(starts)
    prefill = np.zeros((n, m))
    decode = np.zeros((n, m))
    for r, req in enumerate(requests):
        of = b.of_token[r]
        if not len(of):
            continue
        prefill[r] = spread(b.begin_ns[of[:1]], b.first_ns[of[:1]], np.array([req.prompt_tokens]), starts, ends)
        if len(of) > 1:
            decode[r] = spread(b.begin_ns[of[1:]], b.first_ns[of[1:]], np.ones(len(of) - 1), starts, ends)
    return prefill, decode


def stream_steps(b: Bursts) -> Steps | None:
    """The engine's steps as the stream shows them, one a burst; None where the bursts do
    not count steps (more than ``MAX_MERGED_BURSTS`` of them merged)."""
    if not b.merged <= MAX_MERGED_BURSTS:
        return None
    return Steps(b.begin_ns, b.first_ns, b.prefill_tokens, b.decode_tokens)


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


def token_dof(n_intervals: int, terms: int) -> int:
    """Degrees of freedom of a fit's t-intervals: the intervals less its coefficients (two
    token terms, three with the steps). A reader of a fit's interval recovers its standard
    error with it."""
    return n_intervals - terms


def _log_se(est: Estimate, dof: int) -> float:
    """Standard error of log(value): the t-interval's half-width back to a standard error,
    over the value (NaN without an interval)."""
    if not (dof > 0 and est.value > 0 and math.isfinite(est.low) and math.isfinite(est.high)):
        return math.nan
    return (est.high - est.low) / 2.0 / t_quantile(0.5 + CONFIDENCE / 2.0, dof) / est.value


def ratio_estimate(a: Estimate, dof_a: int, b: Estimate, dof_b: int) -> Estimate:
    """B/A of two independent fits' figures (``dof_*``: their ``token_dof``) and its 95%
    interval, by the delta method on the log scale: each standard error read back from its
    t-interval, the two variances added, Student's t at the Welch-Satterthwaite degrees of
    freedom. No interval where either side has none, no ratio where either value is not
    positive."""
    if not (a.value > 0 and b.value > 0):
        return NO_ESTIMATE
    r = b.value / a.value
    va, vb = _log_se(a, dof_a) ** 2, _log_se(b, dof_b) ** 2
    if not (math.isfinite(va) and math.isfinite(vb)):
        return Estimate(r, math.nan, math.nan)
    var = va + vb
    if var == 0:
        return Estimate(r, r, r)
    dof = var**2 / (va**2 / dof_a + vb**2 / dof_b)  # Welch-Satterthwaite
    half = t_quantile(0.5 + CONFIDENCE / 2.0, dof) * math.sqrt(var)
    return Estimate(r, r * math.exp(-half), r * math.exp(half))


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
    terms: int  # 2: prefill and decode tokens; 3: and the engine's steps
    hac_lag: int
    prefill_j_per_token: Estimate  # all in: with its share of the steps' energy
    decode_j_per_token: Estimate
    step_j: Estimate  # J per engine step (NO_ESTIMATE without the step term)
    idle_w: Estimate
    idle_share: Estimate  # idle_j / measured_j (idle power x time, plus intervals fitted at no energy)
    r2: float  # of the energy above idle, about its mean
    nrmse: float  # residual standard error / mean interval energy
    measured_j: float
    idle_j: float
    prefill_j: float
    decode_j: float
    interval_prefill_j: np.ndarray  # attributed per interval (residual included)
    interval_decode_j: np.ndarray


@dataclass(frozen=True)
class _Work:
    """What a fit explains the energy with: tokens per interval and, where counted, the
    steps (per interval, and each step's own tokens to share its energy by)."""

    p: np.ndarray
    d: np.ndarray
    steps: Steps | None
    starts: np.ndarray
    ends: np.ndarray
    n: np.ndarray  # steps per interval (zeros without steps)


def _parts(beta: np.ndarray, w: _Work) -> tuple[np.ndarray, np.ndarray]:
    """Each interval's fitted prefill and decode energy: the token terms, plus each step's
    energy shared by its own prefill and decode tokens in proportion to their fitted
    energies (half each where both are fitted at zero or less)."""
    fa, fb = beta[0] * w.p, beta[1] * w.d
    if len(beta) < 3 or w.steps is None:
        return fa, fb
    sa, sb = beta[0] * w.steps.prefill_tokens, beta[1] * w.steps.decode_tokens
    tok = sa + sb
    to_prefill = np.divide(sa, tok, out=np.full_like(tok, 0.5), where=tok > 0)
    step_pre = beta[2] * w.steps.per_interval(w.starts, w.ends, to_prefill)
    return fa + step_pre, fb + beta[2] * w.n - step_pre


def _per_token(beta: np.ndarray, w: _Work) -> np.ndarray:
    pre, dec = _parts(beta, w)
    return np.array([pre.sum() / w.p.sum(), dec.sum() / w.d.sum()])


def delta_cov(fn: Callable[[np.ndarray], np.ndarray], beta: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Covariance of ``fn(beta)`` by the delta method, the gradient by central differences
    (each step scaled to its coefficient's size or error, so it stays well inside the
    region where ``fn`` is smooth, e.g. where shares of a step's energy do not flip)."""
    k = len(beta)
    grad = np.empty((len(fn(beta)), k))
    for i in range(k):
        h = np.zeros(k)
        h[i] = 1e-5 * max(abs(beta[i]), math.sqrt(max(cov[i, i], 0.0)), 1e-12)
        grad[:, i] = (fn(beta + h) - fn(beta - h)) / (2 * h[i])
    return np.asarray(grad @ cov @ grad.T)


def independent(x: np.ndarray) -> bool:
    """Whether the design's columns vary apart from each other enough to be told apart
    (module docstring): a column of zeros, or one nearly a combination of the others, is
    not."""
    norms = np.linalg.norm(x, axis=0)
    if not np.all(norms > 0):
        return False
    sv = np.linalg.svd(x / norms, compute_uv=False)
    return bool(sv[-1] >= MIN_INDEPENDENCE * sv[0])


def fit(intervals: Intervals, idle: IdleFit) -> Fit:
    """Fit the work's coefficients over ``intervals`` with idle power fixed at ``idle``
    (module docstring). The step term is left out where ``intervals.steps`` is None or
    does not vary independently of the tokens."""
    n = len(intervals)
    e = intervals.energy_j.astype(float)
    dt = intervals.dt_s.astype(float)
    p = intervals.prefill_tokens.astype(float)
    d = intervals.decode_tokens.astype(float)
    measured = float(e.sum())
    idle_w = idle.watts.value
    empty = np.zeros(n)
    poor = lambda why: Fit(  # noqa: E731 - one place builds every poor fit
        False, why, n, 2 if intervals.steps is None else 3, hac_lag(max(n, 1)), NO_ESTIMATE, NO_ESTIMATE,
        NO_ESTIMATE, idle.watts, NO_ESTIMATE, math.nan, math.nan, measured, measured, 0.0, 0.0, empty, empty,
    )
    if not math.isfinite(idle_w):
        return poor("no idle power measured")
    if n < MIN_INTERVALS:
        return poor(f"{n} counter intervals; at least {MIN_INTERVALS} are needed")
    x = np.column_stack([p, d])
    if not independent(x):
        return poor("prefill and decode tokens do not vary independently over the intervals")
    work = _Work(p, d, None, intervals.start_ns, intervals.end_ns, np.zeros(n))
    if intervals.steps is not None and len(intervals.steps):
        counted = intervals.steps.per_interval(intervals.start_ns, intervals.end_ns)
        with_steps = np.column_stack([p, d, counted])
        if independent(with_steps):
            x, work = with_steps, _Work(p, d, intervals.steps, intervals.start_ns, intervals.end_ns, counted)
    k = x.shape[1]
    y = e - idle_w * dt
    beta, cov, u = ols_hac(x, y)
    g = np.linalg.inv(x.T @ x) @ x.T @ dt
    cov = cov + np.outer(g, g) * idle.se_w**2
    df = token_dof(n, k)
    value = _per_token(beta, work)
    tok_cov = delta_cov(lambda c: _per_token(c, work), beta, cov)
    a = t_estimate(float(value[0]), math.sqrt(max(tok_cov[0, 0], 0.0)), df)
    b = t_estimate(float(value[1]), math.sqrt(max(tok_cov[1, 1], 0.0)), df)
    c = t_estimate(float(beta[2]), math.sqrt(max(cov[2, 2], 0.0)), df) if k == 3 else NO_ESTIMATE
    nrmse = math.sqrt(float(u @ u) / df) / float(e.mean())
    about_mean = float((y - y.mean()) @ (y - y.mean()))
    r2 = 1.0 - float(u @ u) / about_mean if about_mean > 0 else math.nan
    idle_fit_j = idle_w * float(dt.sum())

    # The sum rule: each interval's residual to its prefill and decode parts, by their
    # fitted energy.
    fa, fb = _parts(beta, work)
    fitted = fa + fb
    active = fitted > 0
    scale = np.where(active, 1.0 + u / np.where(active, fitted, 1.0), 0.0)
    pre_i, dec_i = fa * scale, fb * scale
    # An interval fitted at no energy (nothing ran, or a coefficient came out negative in
    # a poor fit) has all its energy above idle counted as idle.
    idle_j = idle_fit_j + float(y[~active].sum())
    prefill_j, decode_j = float(pre_i.sum()), float(dec_i.sum())
    # The idle share is the idle part of the sum rule, so it and the token parts make 100%;
    # its uncertainty is the idle power's, over the span.
    share = t_estimate(idle_j / measured, idle.se_w * float(dt.sum()) / measured, idle.n_intervals - 1)

    reasons = []
    if not r2 >= MIN_R2:
        what = "tokens and steps" if k == 3 else "tokens"
        reasons.append(f"the {what} explain {r2:.0%} of the energy above idle (at least {MIN_R2:.0%} needed)")
    for name, est in (("J per prefill token", a), ("J per decode token", b)):
        if not est.low > 0:
            reasons.append(f"the interval of {name} reaches zero")
    return Fit(
        ok=not reasons,
        reason="; ".join(reasons),
        n_intervals=n,
        terms=k,
        hac_lag=hac_lag(n),
        prefill_j_per_token=a,
        decode_j_per_token=b,
        step_j=c,
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
