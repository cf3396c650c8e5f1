"""Per-configuration figures from measured windows.

One pure function, ``config_result``, turns a configuration's windows into its figures.
The live session calls it on ``ConfigFinished`` and a replay calls it on the same events,
so a replayed recording reproduces the live numbers exactly (same inputs, same code,
plain-Python arithmetic in a fixed order).

Energy comes from the energy counter read at the window edges (``Window.energy_j``); a
window holds ``calls`` repeated prefill calls or ``calls`` decode runs of ``steps`` steps
each, so per-call figures divide by ``calls``. Each figure is the median over the
measured windows (role 'measure'); warm-up and idle windows never enter a figure.

CV is the *sample* coefficient of variation, stdev (n-1 denominator) / mean, over the
per-window values: the windows are a small sample (typically 3 repeats) of the card's
steady state, and the population formula would understate their spread. With a single
window the CV is NaN (undefined), never 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from wattscope.config import BASELINE_PRECISION
from wattscope.events import ConfigFinished, ConfigResult, ConfigStarted, RunWarning, Window
from wattscope.stats import NO_ESTIMATE, RatioEstimate, paired_ratio

NAN = float("nan")

# A figure whose window-to-window CV exceeds this gets a warning.
CV_LIMIT = 0.03

# name -> (unit, meaning). Every ConfigResult.figures has exactly these keys.
FIGURES: dict[str, tuple[str, str]] = {
    "prefill_energy_j": ("J", "energy per prefill call (whole batch), tail removed at idle power, median over windows"),
    "prefill_energy_raw_j": ("J", "energy per prefill call with the window's tail left in, median over windows"),
    "prefill_energy_cv": ("fraction", "sample CV of prefill energy per call across windows"),
    "prefill_latency_s": ("s", "work time per prefill call, median over windows"),
    "prefill_power_w": ("W", "average power during prefill work, median over windows of work energy / work time"),
    "prefill_power_min_w": ("W", "lowest window average power during prefill"),
    "prefill_power_max_w": ("W", "highest window average power during prefill"),
    "prefill_energy_idle_sub_j": ("J", "prefill energy per call minus idle power x time per call, median"),
    "prefill_windows": ("count", "measured prefill windows"),
    "prefill_tail_s": ("s", "median time from the end of the work to the counter update closing a window"),
    "decode_energy_j": ("J", "energy per decode run of decode_steps steps (whole batch), tail removed, median"),
    "decode_energy_raw_j": ("J", "energy per decode run with the window's tail left in, median"),
    "decode_energy_cv": ("fraction", "sample CV of decode energy per run across windows"),
    "decode_energy_per_token_j": ("J/token", "decode energy per generated token, median"),
    "decode_latency_s": ("s", "time per decode run of decode_steps steps, median"),
    "decode_tok_s": ("tokens/s", "batch x steps x runs / work time (window minus its tail), median over windows"),
    "decode_tok_s_cv": ("fraction", "sample CV of decode tok/s across windows"),
    "decode_power_w": ("W", "average power during decode work, median over windows of work energy / work time"),
    "decode_power_min_w": ("W", "lowest window average power during decode"),
    "decode_power_max_w": ("W", "highest window average power during decode"),
    "decode_energy_idle_sub_j": ("J", "decode energy per run minus idle power x time per run, median"),
    "decode_steps": ("count", "decode steps per run"),
    "decode_windows": ("count", "measured decode windows"),
    "decode_tail_s": ("s", "median time from the end of the work to the counter update closing a window"),
    "idle_power_w": ("W", "idle power of the card with the models of this model and batch loaded"),
    "rounds": ("count", "interleaved rounds paired with the FP16 row of the same model and batch"),
    "prefill_energy_ratio": ("x", "prefill energy over FP16's, geometric mean of per-round paired ratios"),
    "prefill_energy_ratio_low": ("x", "lower end of the prefill energy ratio's 95% interval"),
    "prefill_energy_ratio_high": ("x", "upper end of the prefill energy ratio's 95% interval"),
    "decode_energy_ratio": ("x", "decode energy over FP16's, geometric mean of per-round paired ratios"),
    "decode_energy_ratio_low": ("x", "lower end of the decode energy ratio's 95% interval"),
    "decode_energy_ratio_high": ("x", "upper end of the decode energy ratio's 95% interval"),
    "decode_speed_ratio": ("x", "decode tok/s over FP16's, geometric mean of per-round paired ratios"),
    "decode_speed_ratio_low": ("x", "lower end of the decode speed ratio's 95% interval"),
    "decode_speed_ratio_high": ("x", "upper end of the decode speed ratio's 95% interval"),
}

# Each ratio and the per-window figure it divides by FP16's of the same round.
RATIO_FIGURES = {
    "prefill_energy_ratio": "prefill_energy_j",
    "decode_energy_ratio": "decode_energy_j",
    "decode_speed_ratio": "decode_tok_s",
}

# Figures checked against CV_LIMIT, with the words a warning uses for them.
_CV_CHECKS = {
    "prefill_energy_cv": "prefill energy per call",
    "decode_energy_cv": "decode energy per run",
    "decode_tok_s_cv": "decode tok/s",
}


def cv(values: Sequence[float]) -> float:
    """Sample coefficient of variation (stdev with n-1 / mean); NaN for fewer than 2
    values or a zero mean."""
    if len(values) < 2:
        return NAN
    mean = statistics.fmean(values)
    if mean == 0:
        return NAN
    return statistics.stdev(values) / mean


def idle_power_w(windows: Iterable[Window], group: str | None = None) -> float | None:
    """Idle power (W) from the 'idle' role windows (of ``group`` where it has some: the
    card idle with that model and batch loaded; else all of them, as in recordings made
    before idle was measured per group): their total energy over their total duration, so
    a longer idle window weighs more. None when there is no usable one."""
    idle = [w for w in windows if w.role == "idle" and w.end_ns > w.start_ns and math.isfinite(w.energy_j)]
    own = [w for w in idle if group is not None and w.group == group]
    idle = own or idle
    if not idle:
        return None
    return sum(w.energy_j for w in idle) / sum(w.duration_s for w in idle)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else NAN


def work_energy_j(w: Window, idle_w: float | None) -> float:
    """The window's counter energy less its tail (work end -> closing counter update) at
    idle power: the energy of the work itself. The raw energy where idle is unknown."""
    return w.energy_j if idle_w is None else w.energy_j - idle_w * w.tail_s


def window_value(w: Window, figure: str, idle_w: float | None) -> float:
    """One window's value of a per-call figure: energy per call (tail removed) or tok/s."""
    if figure == "decode_tok_s":
        return w.tokens / w.work_s if w.work_s > 0 else NAN
    return work_energy_j(w, idle_w) / w.calls


def _phase_figures(phase: str, ws: list[Window], batch: int, idle_w: float | None) -> dict[str, float]:
    # A window whose counter read failed (NaN) still times the phase but gives no energy.
    e_ws = [w for w in ws if math.isfinite(w.energy_j)]
    energy = [window_value(w, f"{phase}_energy_j", idle_w) for w in e_ws]
    latency = [w.work_s / w.calls for w in ws]
    power = [work_energy_j(w, idle_w) / w.work_s for w in e_ws if w.work_s > 0]
    idle_sub = [NAN] if idle_w is None else [(w.energy_j - idle_w * w.duration_s) / w.calls for w in e_ws]
    out = {
        f"{phase}_energy_j": _median(energy),
        f"{phase}_energy_raw_j": _median([w.energy_j / w.calls for w in e_ws]),
        f"{phase}_energy_cv": cv(energy),
        f"{phase}_latency_s": _median(latency),
        f"{phase}_power_w": _median(power),
        f"{phase}_power_min_w": min(power, default=NAN),
        f"{phase}_power_max_w": max(power, default=NAN),
        f"{phase}_energy_idle_sub_j": _median(idle_sub),
        f"{phase}_windows": float(len(ws)),
        f"{phase}_tail_s": _median([w.tail_s for w in ws]),
    }
    if phase == "decode":
        tokens = [batch * w.steps * w.calls for w in ws]
        tok_s = [t / w.work_s for t, w in zip(tokens, ws)]
        out["decode_energy_per_token_j"] = _median(
            [work_energy_j(w, idle_w) / t for t, w in zip(tokens, ws) if t > 0 and math.isfinite(w.energy_j)]
        )
        out["decode_tok_s"] = _median(tok_s)
        out["decode_tok_s_cv"] = cv(tok_s)
        out["decode_steps"] = float(ws[0].steps) if ws else NAN
    return out


def _usable(w: Window, config_id: str) -> bool:
    return (
        w.config_id == config_id
        and w.role == "measure"
        and w.phase in ("prefill", "decode")
        and w.calls > 0
        and w.end_ns > w.start_ns
    )


def _rounds(windows: Iterable[Window], config_id: str, phase: str) -> dict[int, Window]:
    return {
        w.round: w for w in windows
        if _usable(w, config_id) and w.phase == phase and w.round is not None and math.isfinite(w.energy_j)
    }


def round_ratios(
    windows: Iterable[Window], config_id: str, base_id: str, figure: str, idle_w: float | None
) -> list[float]:
    """Per measured round, the row's window value over the baseline's of the same round."""
    ws = list(windows)
    phase = figure.split("_", 1)[0]
    mine, base = _rounds(ws, config_id, phase), _rounds(ws, base_id, phase)
    out = []
    for r in sorted(mine.keys() & base.keys()):
        den = window_value(base[r], figure, idle_w)
        out.append(window_value(mine[r], figure, idle_w) / den if den > 0 else NAN)
    return out


def paired_ratios(
    windows: Iterable[Window], config_id: str, base_id: str, idle_w: float | None
) -> dict[str, RatioEstimate]:
    """Every ratio of a row to its baseline from the rounds they share (wattscope.stats)."""
    ws = list(windows)
    return {name: paired_ratio(round_ratios(ws, config_id, base_id, fig, idle_w)) for name, fig in RATIO_FIGURES.items()}


def _ratio_figures(estimates: dict[str, RatioEstimate]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in RATIO_FIGURES:
        e = estimates.get(name, NO_ESTIMATE)
        out |= {name: e.value, f"{name}_low": e.low, f"{name}_high": e.high}
    out["rounds"] = float(min((e.n for e in estimates.values()), default=0))
    return out


def config_result(
    started: ConfigStarted,
    finished: ConfigFinished,
    windows: Iterable[Window],
    idle_power_w: float | None,
    baseline_id: str | None = None,
    ci_target: float | None = None,
) -> tuple[ConfigResult, list[RunWarning]]:
    """The ConfigResult of one configuration and the warnings its figures raise.

    Only the configuration's own 'measure' windows count for its figures; with
    ``baseline_id`` (the FP16 row measured in the same interleaved rounds, whose windows
    ``windows`` must then hold too) the ratios and their 95% intervals come from the
    rounds both rows share. The baseline row itself gets ratios of exactly 1 without an
    interval. A failed configuration gets ok=False, the runner's reason and NaN for every
    figure. Both events are stamped with ``finished.t_ns`` so a replay produces
    byte-identical events.
    """
    t, cid = finished.t_ns, started.config_id

    def result(ok: bool, reason: str, figures: dict[str, float]) -> ConfigResult:
        return ConfigResult(
            t_ns=t, config_id=cid, model=started.model, batch=started.batch,
            precision=started.precision, synthetic=started.synthetic,
            ok=ok, reason=reason, figures=figures,
        )

    if not finished.ok:
        return result(False, finished.reason or "failed", dict.fromkeys(FIGURES, NAN)), []

    warnings: list[RunWarning] = []

    def warn(message: str) -> None:
        warnings.append(RunWarning(t_ns=t, source="metrics", message=f"{cid}: {message}", config_id=cid))

    all_ws = list(windows)
    ws = [w for w in all_ws if _usable(w, cid)]
    figures: dict[str, float] = {"idle_power_w": NAN if idle_power_w is None else idle_power_w}
    for phase in ("prefill", "decode"):
        phase_ws = sorted((w for w in ws if w.phase == phase), key=lambda w: w.start_ns)
        if not phase_ws:
            warn(f"no measured {phase} windows; its figures are blank")
        figures.update(_phase_figures(phase, phase_ws, started.batch, idle_power_w))
    no_energy = sum(not math.isfinite(w.energy_j) for w in ws)
    if no_energy:
        warn(f"{no_energy} of {len(ws)} measured windows have no energy reading; energy figures use the rest")
    decode_steps = {w.steps for w in ws if w.phase == "decode"}
    if len(decode_steps) > 1:
        warn(f"decode windows disagree on steps per run ({sorted(decode_steps)}); decode_steps is the first's")
    if baseline_id == cid:
        figures |= _ratio_figures({})
        figures |= dict.fromkeys(RATIO_FIGURES, 1.0)
        figures["rounds"] = float(len(_rounds(ws, cid, "decode")))
    elif baseline_id is not None:
        estimates = paired_ratios(all_ws, cid, baseline_id, idle_power_w)
        figures |= _ratio_figures(estimates)
        for name, est in estimates.items():
            if ci_target is not None and not est.half_width <= ci_target:
                spread = "no interval" if math.isnan(est.half_width) else f"95% interval +-{est.half_width:.1%}"
                warn(f"{name.replace('_', ' ')}: {spread} after {est.n} rounds (target +-{ci_target:.0%})")
    else:
        figures |= _ratio_figures({})
    # Window-to-window CV is what paired rounds make irrelevant to the ratios; it is
    # still warned about where there are no rounds to judge by (older protocols).
    cv_checks = {} if baseline_id is not None else _CV_CHECKS
    for name, words in cv_checks.items():
        value = figures[name]
        if not math.isnan(value) and value > CV_LIMIT:
            n = int(figures[f"{name.split('_')[0]}_windows"])
            warn(f"{words} varies {value:.1%} across {n} windows (CV above {CV_LIMIT:.0%})")
    # Keep the figure order of FIGURES so every result lists them the same way.
    return result(True, "", {k: figures[k] for k in FIGURES}), warnings


def group_result(
    started: ConfigStarted,
    finished: ConfigFinished,
    all_started: Iterable[ConfigStarted],
    all_windows: Iterable[Window],
    ci_target: float | None = None,
) -> tuple[ConfigResult, list[RunWarning]]:
    """``config_result`` with its inputs picked from a whole run: the windows of every
    row measured in the same rounds (its group), that group's idle baseline, and its FP16
    row as the baseline. The live session and any recomputation from a recording call
    this, so both derive a row from the same windows the same way."""
    peers = [s for s in all_started if started.group is not None and s.group == started.group]
    ids = {s.config_id for s in peers} | {started.config_id}
    windows = [w for w in all_windows if w.config_id in ids or w.config_id is None]
    base = [s.config_id for s in peers if s.precision == BASELINE_PRECISION]
    return config_result(
        started, finished, windows, idle_power_w(windows, started.group), base[0] if base else None, ci_target
    )
