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

from wattscope.events import ConfigFinished, ConfigResult, ConfigStarted, RunWarning, Window

NAN = float("nan")

# A figure whose window-to-window CV exceeds this gets a warning.
CV_LIMIT = 0.03

# name -> (unit, meaning). Every ConfigResult.figures has exactly these keys.
FIGURES: dict[str, tuple[str, str]] = {
    "prefill_energy_j": ("J", "energy per prefill call (whole batch), median over windows"),
    "prefill_energy_cv": ("fraction", "sample CV of prefill energy per call across windows"),
    "prefill_latency_s": ("s", "work time per prefill call, median over windows"),
    "prefill_power_w": ("W", "average power during prefill, mean over windows of energy/duration"),
    "prefill_power_min_w": ("W", "lowest window average power during prefill"),
    "prefill_power_max_w": ("W", "highest window average power during prefill"),
    "prefill_energy_idle_sub_j": ("J", "prefill energy per call minus idle power x time per call, median"),
    "prefill_windows": ("count", "measured prefill windows"),
    "prefill_tail_s": ("s", "median time from the end of the work to the counter update closing a window"),
    "decode_energy_j": ("J", "energy per decode run of decode_steps steps (whole batch), median"),
    "decode_energy_cv": ("fraction", "sample CV of decode energy per run across windows"),
    "decode_energy_per_token_j": ("J/token", "decode energy per generated token, median"),
    "decode_latency_s": ("s", "time per decode run of decode_steps steps, median"),
    "decode_tok_s": ("tokens/s", "batch x steps x runs / work time (window minus its tail), median over windows"),
    "decode_tok_s_cv": ("fraction", "sample CV of decode tok/s across windows"),
    "decode_power_w": ("W", "average power during decode, mean over windows of energy/duration"),
    "decode_power_min_w": ("W", "lowest window average power during decode"),
    "decode_power_max_w": ("W", "highest window average power during decode"),
    "decode_energy_idle_sub_j": ("J", "decode energy per run minus idle power x time per run, median"),
    "decode_steps": ("count", "decode steps per run"),
    "decode_windows": ("count", "measured decode windows"),
    "decode_tail_s": ("s", "median time from the end of the work to the counter update closing a window"),
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


def idle_power_w(windows: Iterable[Window]) -> float | None:
    """Idle power (W) from the 'idle' role windows: their total energy over their total
    duration, so a longer idle window weighs more. None when there is no usable one."""
    idle = [w for w in windows if w.role == "idle" and w.end_ns > w.start_ns and math.isfinite(w.energy_j)]
    if not idle:
        return None
    return sum(w.energy_j for w in idle) / sum(w.duration_s for w in idle)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else NAN


def _phase_figures(phase: str, ws: list[Window], batch: int, idle_w: float | None) -> dict[str, float]:
    # A window whose counter read failed (NaN) still times the phase but gives no energy.
    e_ws = [w for w in ws if math.isfinite(w.energy_j)]
    energy = [w.energy_j / w.calls for w in e_ws]
    latency = [w.work_s / w.calls for w in ws]
    power = [w.energy_j / w.duration_s for w in e_ws]
    idle_sub = [NAN] if idle_w is None else [(w.energy_j - idle_w * w.duration_s) / w.calls for w in e_ws]
    out = {
        f"{phase}_energy_j": _median(energy),
        f"{phase}_energy_cv": cv(energy),
        f"{phase}_latency_s": _median(latency),
        f"{phase}_power_w": statistics.fmean(power) if power else NAN,
        f"{phase}_power_min_w": min(power, default=NAN),
        f"{phase}_power_max_w": max(power, default=NAN),
        f"{phase}_energy_idle_sub_j": _median(idle_sub),
        f"{phase}_windows": float(len(ws)),
        # Time from the end of the work to the counter update that closed the window.
        f"{phase}_tail_s": _median([w.duration_s - w.work_s for w in ws]),
    }
    if phase == "decode":
        tokens = [batch * w.steps * w.calls for w in ws]
        tok_s = [t / w.work_s for t, w in zip(tokens, ws)]
        out["decode_energy_per_token_j"] = _median(
            [w.energy_j / t for t, w in zip(tokens, ws) if t > 0 and math.isfinite(w.energy_j)]
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


def config_result(
    started: ConfigStarted,
    finished: ConfigFinished,
    windows: Iterable[Window],
    idle_power_w: float | None,
) -> tuple[ConfigResult, list[RunWarning]]:
    """The ConfigResult of one configuration and the warnings its figures raise.

    Only the configuration's own 'measure' windows count. A failed configuration gets
    ok=False, the runner's reason and NaN for every figure. Both events are stamped with
    ``finished.t_ns`` so a replay produces byte-identical events.
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

    ws = [w for w in windows if _usable(w, cid)]
    figures: dict[str, float] = {}
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
    for name, words in _CV_CHECKS.items():
        value = figures[name]
        if not math.isnan(value) and value > CV_LIMIT:
            n = int(figures[f"{name.split('_')[0]}_windows"])
            warn(f"{words} varies {value:.1%} across {n} windows (CV above {CV_LIMIT:.0%})")
    # Keep the figure order of FIGURES so every result lists them the same way.
    return result(True, "", {k: figures[k] for k in FIGURES}), warnings
