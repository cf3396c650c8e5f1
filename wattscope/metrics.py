"""Every rule about a figure: how it is computed from measured windows, what it is
called, its unit, title and printed digits, which figures carry a CV, the ratio rule,
the precisions' labels and the row order, and how a run's metadata is read. The
displays, the analysis and the exports ask this module; none of them restates a rule.

One pure function, ``config_result``, turns a configuration's windows into its figures,
and ``group_result`` picks its inputs from a run (the windows of the row's group, its idle
baseline, its FP16 row). The live session calls ``group_result`` on ``ConfigFinished`` and
records the result; a replay plays the recorded result back (plain-Python arithmetic in a
fixed order, so the same windows always give the same figures). Ratios come from the
rounds a row shares with its FP16 row (``paired_ratios``, ``wattscope.stats``).

Energy comes from the energy counter read at the window edges (``Window.energy_j``); a
window holds ``calls`` repeated prefill calls or ``calls`` decode runs of ``steps`` steps
each, so per-call figures divide by ``calls``. Each figure is the median over the
measured windows (role 'measure'); warm-up and idle windows never enter a figure.

CV is the *sample* coefficient of variation, stdev (n-1 denominator) / mean, over the
per-window values: the windows are a small sample (a few rounds) of the card's
steady state, and the population formula would understate their spread. With a single
window the CV is NaN (undefined), never 0.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from wattscope.config import BASELINE_PRECISION, ENGINES, PRECISIONS
from wattscope.events import ConfigFinished, ConfigResult, ConfigStarted, RunWarning, Window
from wattscope.stats import NO_ESTIMATE, RatioEstimate, paired_ratio, relative_half_width

NAN = float("nan")

# A figure whose window-to-window CV exceeds this gets a warning.
CV_LIMIT = 0.03


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    """One number of a configuration's result and how every surface names it.

    ``title`` is the column title every table prints; ``{per}`` stands for what a decode
    run is (``32 tok`` when the rows share one step count, else ``run``) and ``{sub}``
    for ``, idle-sub`` where the energies are idle-subtracted. ``digits`` are the printed
    decimals (of the percentage, for a fraction). ``cv`` names the figure that holds this
    one's window-to-window CV, and ``words`` is how a warning about it names it."""

    unit: str
    meaning: str
    title: str = ""
    digits: int = 3
    cv: str = ""
    words: str = ""


# Every ConfigResult.figures has exactly these keys, in this order (recordings keep it).
FIGURES: dict[str, Figure] = {
    "prefill_energy_j": Figure(
        "J", "energy per prefill call (whole batch), the window's tail removed at idle power, median over windows",
        "Prefill Energy / Call{sub} (J)", 3, "prefill_energy_cv", "prefill energy per call"),
    "prefill_energy_raw_j": Figure("J", "energy per prefill call with the window's tail left in, median over windows"),
    "prefill_energy_cv": Figure(
        "fraction", "sample CV of prefill energy per call across windows", "Prefill Energy CV", 1),
    "prefill_latency_s": Figure("s", "work time per prefill call, median over windows"),
    "prefill_power_w": Figure(
        "W", "average power during prefill work, median over windows of work energy / work time",
        "Prefill Power (W)", 0),
    "prefill_power_min_w": Figure("W", "lowest window average power during prefill"),
    "prefill_power_max_w": Figure("W", "highest window average power during prefill"),
    "prefill_energy_idle_sub_j": Figure("J", "prefill energy per call minus idle power x time per call, median"),
    "prefill_windows": Figure("count", "measured prefill windows"),
    "prefill_tail_s": Figure("s", "median time from the end of the work to the counter update closing a window"),
    "decode_energy_j": Figure(
        "J", "energy per decode run of decode_steps steps (whole batch), the window's tail removed, median",
        "Decode Energy / {per}{sub} (J)", 3, "decode_energy_cv", "decode energy per run"),
    "decode_energy_raw_j": Figure("J", "energy per decode run with the window's tail left in, median"),
    "decode_energy_cv": Figure(
        "fraction", "sample CV of decode energy per run across windows", "Decode Energy CV", 1),
    "decode_energy_per_token_j": Figure(
        "J/token", "decode energy per generated token, median", "Decode Energy / tok{sub} (J)", 4),
    "decode_latency_s": Figure("s", "time per decode run of decode_steps steps, median"),
    "decode_tok_s": Figure(
        "tokens/s", "batch x steps x runs / work time (window minus its tail), median over windows",
        "Decode tok/s", 2, "decode_tok_s_cv", "decode tok/s"),
    "decode_tok_s_cv": Figure("fraction", "sample CV of decode tok/s across windows", "Decode tok/s CV", 1),
    "decode_power_w": Figure(
        "W", "average power during decode work, median over windows of work energy / work time",
        "Decode Power (W)", 0),
    "decode_power_min_w": Figure("W", "lowest window average power during decode"),
    "decode_power_max_w": Figure("W", "highest window average power during decode"),
    "decode_energy_idle_sub_j": Figure("J", "decode energy per run minus idle power x time per run, median"),
    "decode_steps": Figure("count", "decode steps per run"),
    "decode_windows": Figure("count", "measured decode windows"),
    "decode_tail_s": Figure("s", "median time from the end of the work to the counter update closing a window"),
    "idle_power_w": Figure("W", "idle power of the card with this model and batch's models loaded"),
    "rounds": Figure("count", "interleaved rounds paired with the FP16 row of the same model and batch"),
    "prefill_energy_ratio": Figure("x", "prefill energy over FP16's: geometric mean of per-round paired ratios"),
    "prefill_energy_ratio_low": Figure("x", "lower end of the prefill energy ratio's 95% interval"),
    "prefill_energy_ratio_high": Figure("x", "upper end of the prefill energy ratio's 95% interval"),
    "decode_energy_ratio": Figure("x", "decode energy over FP16's: geometric mean of per-round paired ratios"),
    "decode_energy_ratio_low": Figure("x", "lower end of the decode energy ratio's 95% interval"),
    "decode_energy_ratio_high": Figure("x", "upper end of the decode energy ratio's 95% interval"),
    "decode_speed_ratio": Figure("x", "decode tok/s over FP16's: geometric mean of per-round paired ratios"),
    "decode_speed_ratio_low": Figure("x", "lower end of the decode speed ratio's 95% interval"),
    "decode_speed_ratio_high": Figure("x", "upper end of the decode speed ratio's 95% interval"),
}

# figure -> the figure holding its CV, for the figures that have one.
CV_OF: dict[str, str] = {name: f.cv for name, f in FIGURES.items() if f.cv}


def cv_flags(figures: Mapping[str, float], limit: float = CV_LIMIT) -> frozenset[str]:
    """Figures (by name) whose repeats vary by more than ``limit`` (fraction)."""
    return frozenset(name for name, cv_name in CV_OF.items() if _above(figures.get(cv_name), limit))


def _above(cv_value: float | None, limit: float) -> bool:
    return cv_value is not None and math.isfinite(cv_value) and cv_value > limit


# ---------------------------------------------------------------------------- ratios


@dataclass(frozen=True)
class Ratio:
    """A row's figure over its baseline row's (same source, model and batch)."""

    name: str
    figure: str
    title: str
    short: str  # in side-by-side comparisons: "Prefill A", "Prefill B-A"


RATIOS = (
    Ratio("prefill_energy_ratio", "prefill_energy_j", "Prefill Energy Ratio", "Prefill"),
    Ratio("decode_energy_ratio", "decode_energy_j", "Decode Energy Ratio", "Decode"),
    Ratio("decode_speed_ratio", "decode_tok_s", "Decode Speed Ratio", "Speed"),
)
RATIO_NAMES = tuple(r.name for r in RATIOS)

# A row whose group's precisions did not fit in memory together, so each round loaded,
# measured and unloaded them one at a time: its ConfigFinished info holds this under
# "loading", its ConfigResult is ``reloaded`` and every table notes it in these words.
RELOADED = "reloaded per round (precisions did not fit together)"


def reloaded(info: Mapping[str, Any]) -> bool:
    """Whether a row's ConfigFinished info says its group was reloaded per round."""
    return info.get("loading") == RELOADED


def reloaded_groups(rows: Iterable[tuple[str, int, str, bool, bool]]) -> list[str]:
    """The groups, named "model bN[ engine]", whose measured rows (model, batch, engine,
    ok, reloaded) were loaded one precision at a time; in the rows' order."""
    groups = dict.fromkeys((m, int(b), e) for m, b, e, ok, r in rows if ok and r)
    return [f"{m} b{b}{'' if e == 'eager' else ' ' + e}" for m, b, e in groups]

# Where a table keeps a ratio's 95% interval: ``<ratio>_low`` and ``<ratio>_high``.
CI_COLUMNS = tuple(f"{n}_{end}" for n in RATIO_NAMES for end in ("low", "high"))


@dataclass(frozen=True)
class RatioValue:
    """A ratio and, where it was estimated from paired rounds, its 95% interval."""

    value: float
    low: float | None = None
    high: float | None = None

    @property
    def half_width(self) -> float | None:
        """Relative half-width of the interval; None without one."""
        hw = relative_half_width(self.value, self.low, self.high)
        return None if math.isnan(hw) else hw


def ratio(value: float | None, base: float | None) -> float | None:
    """The ratio rule: ``value / base``; None where the base is missing, not finite or
    not positive, or the value is missing or not finite."""
    if value is None or base is None:
        return None
    if not math.isfinite(value) or not math.isfinite(base) or base <= 0:
        return None
    return value / base


def ratios(figures: Mapping[str, float], baseline: Mapping[str, float] | None) -> dict[str, RatioValue | None]:
    """The seed study's three ratios of a row, by ratio name. Energy ratios > 1 mean
    more energy than FP16; the speed ratio < 1 means slower decode than FP16.

    A row measured in paired rounds carries its ratio and 95% interval among its figures
    (``config_result``): those are the ratio. Rows without (recordings made before
    rounds, imported tables) get ``ratio(value, base)`` and no interval."""
    b = baseline or {}
    out: dict[str, RatioValue | None] = {}
    for r in RATIOS:
        v = ratio(figures.get(r.figure), b.get(r.figure))
        paired = _finite(figures.get(r.name))
        if v is None:
            out[r.name] = None  # no usable baseline row or value: no ratio, paired or not
        elif paired is not None:
            out[r.name] = RatioValue(paired, _finite(figures.get(f"{r.name}_low")), _finite(figures.get(f"{r.name}_high")))
        else:
            out[r.name] = RatioValue(v)
    return out


NO_RATIOS: Mapping[str, RatioValue | None] = dict.fromkeys(RATIO_NAMES)


def ratio_value(columns: Mapping[str, Any], name: str) -> RatioValue | None:
    """A ratio as a table row holds it: ``name`` and, where present, ``name_low`` and
    ``name_high``; None where the ratio is blank."""
    v = _finite(columns.get(name))
    if v is None:
        return None
    return RatioValue(v, _finite(columns.get(f"{name}_low")), _finite(columns.get(f"{name}_high")))


def separated(a: RatioValue, b: RatioValue) -> int | None:
    """Whether two ratios differ beyond their intervals: 1 where ``a`` lies above ``b``,
    -1 below, 0 where the intervals overlap, None where either has no interval."""
    if None in (a.low, a.high, b.low, b.high):
        return None
    assert a.low is not None and a.high is not None and b.low is not None and b.high is not None
    if a.low > b.high:
        return 1
    if a.high < b.low:
        return -1
    return 0


def ratio_text(v: float) -> str:
    """How every surface prints a ratio: ``5.12x``."""
    return f"{v:.2f}x"


def title(name: str, decode_steps: int | None = None, idle_subtracted: bool = False) -> str:
    """The column title of a figure or a ratio. A decode run is named by its steps
    (``32 tok``) when ``decode_steps`` is known, else ``run``."""
    for r in RATIOS:
        if r.name == name:
            return r.title
    return FIGURES[name].title.format(per=decode_run(decode_steps), sub=", idle-sub" if idle_subtracted else "")


def decode_run(decode_steps: int | None) -> str:
    """What one decode run is called: ``32 tok`` where its steps are known, else ``run``."""
    return "run" if decode_steps is None else f"{decode_steps} tok"


def common_decode_steps(values: Iterable[float | None]) -> int | None:
    """The decode steps per run that all the given (finite) values agree on, else None."""
    steps = {int(v) for v in values if v is not None and math.isfinite(v)}
    return steps.pop() if len(steps) == 1 else None


def percent_of_tdp(value: float | None, tdp_w: float | None) -> float | None:
    """Power as % of the TDP; None where either is missing, not finite, or the TDP is not positive."""
    if value is None or tdp_w is None or not math.isfinite(value) or not math.isfinite(tdp_w) or tdp_w <= 0:
        return None
    return value / tdp_w * 100


# ------------------------------------------------------------------------ precisions


def precision_label(precision: str) -> str:
    """FP16, BF16, INT8, NF4: how every table prints a precision."""
    return str(precision).upper()


def precision_rank(precision: str) -> int:
    """A precision's place in the row order (a name or a label; unknown ones last)."""
    p = str(precision).lower()
    return PRECISIONS.index(p) if p in PRECISIONS else len(PRECISIONS)


def is_baseline(precision: str) -> bool:
    return str(precision).lower() == BASELINE_PRECISION


_Row = TypeVar("_Row")


def engine_rank(engine: str) -> int:
    """An engine's place in the row order (config.ENGINES: eager first)."""
    return ENGINES.index(engine) if engine in ENGINES else len(ENGINES)


def sorted_rows(
    rows: Iterable[_Row],
    key: Callable[[_Row], tuple[Hashable, int, str] | tuple[Hashable, int, str, str]],
    models: Iterable[Hashable] = (),
) -> list[_Row]:
    """Rows in the order every table lists them: by model (in the order of ``models``,
    then of first appearance among the rows), batch, engine (eager first), then precision
    (FP16, BF16, INT8, NF4). ``key`` gives a row's (model, batch, precision[, engine])."""
    rows = list(rows)
    keys = [key(r) for r in rows]
    rank = {m: i for i, m in enumerate(dict.fromkeys([*models, *(k[0] for k in keys)]))}

    def order_of(i: int) -> tuple[int, int, int, int]:
        k = keys[i]
        engine = k[3] if len(k) > 3 else "eager"
        return rank[k[0]], k[1], engine_rank(str(engine)), precision_rank(k[2])

    return [rows[i] for i in sorted(range(len(rows)), key=order_of)]


# -------------------------------------------------------------------------- run meta


@dataclass(frozen=True)
class GpuMeta:
    """One GPU as the session described it at the start of the run (``sensor.info()``
    plus the measured refresh periods and the signals the sensor lacks)."""

    index: int
    name: str
    driver: str
    tdp_w: float | None  # the default power limit
    refresh_s: Mapping[str, float | None]  # signal -> measured refresh period; None = not measured
    signal_sources: Mapping[str, str]
    signals_absent: Mapping[str, str]  # signal -> why it is absent
    # How the run named it (telemetry.gpu_map): its CUDA ordinal in the user's process
    # (None in recordings made before the binding was recorded), UUID and PCI bus id.
    cuda_ordinal: int | None = None
    uuid: str = ""
    pci_bus_id: str = ""

    def refresh_ms(self, signal: str) -> float | None:
        v = self.refresh_s.get(signal)
        return None if v is None else 1000.0 * v


@dataclass(frozen=True)
class RunMeta:
    """What a recording's ``RunStarted`` meta says about the run, read in one place."""

    gpus: tuple[GpuMeta, ...]
    signal: str  # the instant-power signal the live graph shows
    sweep_name: str
    simulated: bool
    weights: str  # "real", "synthetic", "mixed" or "" (not stated)
    energy_signal: str
    sampler: Mapping[str, Any]  # rate_hz, energy_hz, gpus
    sweep: Mapping[str, Any]  # Sweep.to_dict(): protocol, bitsandbytes, configs...
    packages: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""  # ISO 8601 wall time the run was described, to the second
    # (Unix ns, CLOCK_MONOTONIC ns) read together at the start; None in older recordings.
    clock_anchor: tuple[int, int] | None = None

    @property
    def gpu(self) -> GpuMeta | None:
        return self.gpus[0] if self.gpus else None

    @property
    def gpu_label(self) -> str:
        """What the run measured, by name: "NVIDIA H100 80GB HBM3", "2 × NVIDIA H100 80GB
        HBM3" for a model split over two alike cards, names joined by " + " otherwise."""
        names = [g.name for g in self.gpus]
        if len(set(names)) == 1 and len(names) > 1:
            return f"{len(names)} × {names[0]}"
        return " + ".join(names)

    @property
    def tdp_w(self) -> float | None:
        """The TDP of what the run measured: the sum of its GPUs' default power limits
        (a model split over several cards draws from all of them); None if any is unknown."""
        limits = [g.tdp_w for g in self.gpus]
        if not limits or any(t is None for t in limits):
            return None
        return math.fsum(t for t in limits if t is not None)


POWER_SIGNALS = ("power_w", "power_avg_w")


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _positive(v: Any) -> float | None:
    f = _finite(v)
    return f if f is not None and f > 0 else None


def _gpu_meta(g: Mapping[str, Any], position: int) -> GpuMeta:
    index = g.get("index")
    refresh = {str(k): _finite(v) for k, v in _mapping(g.get("refresh_s")).items()}
    binding = _mapping(g.get("binding"))
    ordinal = binding.get("cuda_ordinal")
    return GpuMeta(
        index=index if isinstance(index, int) else position,
        name=str(g.get("name") or ""),
        driver=str(g.get("driver_version") or ""),
        tdp_w=_positive(g.get("tdp_w")),
        refresh_s=refresh,
        signal_sources={str(k): str(v) for k, v in _mapping(g.get("signal_sources")).items()},
        signals_absent={str(k): str(v) for k, v in _mapping(g.get("signals_absent")).items()},
        cuda_ordinal=ordinal if isinstance(ordinal, int) and not isinstance(ordinal, bool) else None,
        uuid=str(g.get("uuid") or ""),
        pci_bus_id=str(g.get("pci_bus_id") or ""),
    )


def run_meta(meta: Mapping[str, Any]) -> RunMeta:
    """Read the meta the session writes (``Session._describe``): ``gpus`` (``gpu`` is
    the first of them), ``sampler.signal``, ``sweep``, ``simulated``, ``weights``,
    ``energy_signal``, ``packages``, ``created``, ``clock_anchor``. Keys it lacks read as unknown, never as a guess."""
    listed = meta.get("gpus")
    if not isinstance(listed, list) or not listed:
        listed = [meta.get("gpu")]
    gpus = tuple(_gpu_meta(g, i) for i, g in enumerate(listed) if isinstance(g, Mapping))
    sampler = _mapping(meta.get("sampler"))
    sweep = _mapping(meta.get("sweep"))
    signal = sampler.get("signal")
    return RunMeta(
        gpus=gpus,
        signal=signal if signal in POWER_SIGNALS else POWER_SIGNALS[0],
        sweep_name=str(sweep.get("name") or ""),
        simulated=bool(meta.get("simulated", False)),
        weights=str(meta.get("weights") or ""),
        energy_signal=str(meta.get("energy_signal") or ""),
        sampler=sampler,
        sweep=sweep,
        packages=_mapping(meta.get("packages")),
        created=str(meta.get("created") or ""),
        clock_anchor=_anchor(meta.get("clock_anchor")),
    )


# -------------------------------------------------------------------- sampler health

# A measured window is flagged when its instant-power samples have a hole longer than
# STALL_GAP_S (or STALL_PERIODS sample periods, for slow rates), or hold fewer than
# MIN_RATE_FRACTION of the samples the sampler's rate promises (judged from
# MIN_EXPECTED_SAMPLES on): the cross-check integral then interpolates across the hole,
# and the live graph was blind for it. A sensor refreshes every ~100 ms, so a 250 ms hole
# has lost at least one fresh value; a healthy sampler's worst lateness is ~1 ms.
STALL_GAP_S = 0.25
STALL_PERIODS = 5
MIN_RATE_FRACTION = 0.8
MIN_EXPECTED_SAMPLES = 10


def stall_gap_limit_s(rate_hz: float | None) -> float:
    """The longest hole in the samples that is not a stall, at ``rate_hz``."""
    return max(STALL_GAP_S, STALL_PERIODS / rate_hz) if rate_hz else STALL_GAP_S


def sampler_stall(times_ns: Sequence[int], start_ns: int, end_ns: int, rate_hz: float | None) -> str | None:
    """Why the sample times ``times_ns`` (sorted; one GPU's) do not cover the window
    [start_ns, end_ns] as a healthy sampler at ``rate_hz`` would, or None. The hole is
    measured from the last sample before the window to the first after it, as the
    cross-check interpolates; a missing one counts from the window's edge."""
    i, j = bisect_left(times_ns, start_ns), bisect_right(times_ns, end_ns)
    edges = [int(times_ns[i - 1]) if i > 0 else start_ns, *map(int, times_ns[i:j]),
             int(times_ns[j]) if j < len(times_ns) else end_ns]
    gap_s = max(b - a for a, b in zip(edges, edges[1:])) / 1e9
    limit = stall_gap_limit_s(rate_hz)
    if gap_s > limit:
        return f"the sampler stalled: no sample for {gap_s:.2f} s (more than {limit:.2f} s)"
    duration_s = (end_ns - start_ns) / 1e9
    expected = duration_s * rate_hz if rate_hz else 0.0
    if expected >= MIN_EXPECTED_SAMPLES and j - i < MIN_RATE_FRACTION * expected:
        return (f"the sampler slowed: {(j - i) / duration_s:.0f} samples/s of {rate_hz:g} "
                f"(below {MIN_RATE_FRACTION:.0%})")
    return None


def _anchor(v: Any) -> tuple[int, int] | None:
    a = _mapping(v)
    unix_ns, mono_ns = a.get("unix_ns"), a.get("monotonic_ns")
    if isinstance(unix_ns, int) and isinstance(mono_ns, int) and not isinstance(unix_ns, bool):
        return unix_ns, mono_ns
    return None


# ------------------------------------------------------------------------- windows


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


def _rounds(windows: Iterable[Window], config_id: str, phase: str, needs_energy: bool = True) -> dict[int, Window]:
    """A row's measured windows of one phase by round (a window whose counter read failed
    gives no energy, but still times its calls)."""
    return {
        w.round: w for w in windows
        if _usable(w, config_id) and w.phase == phase and w.round is not None
        and (math.isfinite(w.energy_j) or not needs_energy)
    }


def round_ratios(
    windows: Iterable[Window], config_id: str, base_id: str, figure: str, idle_w: float | None
) -> list[float]:
    """Per measured round, the row's window value over the baseline's of the same round."""
    ws = list(windows)
    phase = figure.split("_", 1)[0]
    energy = figure != "decode_tok_s"
    mine, base = _rounds(ws, config_id, phase, energy), _rounds(ws, base_id, phase, energy)
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
    return {r.name: paired_ratio(round_ratios(ws, config_id, base_id, r.figure, idle_w)) for r in RATIOS}


def _ratio_figures(estimates: dict[str, RatioEstimate]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in RATIO_NAMES:
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
            ok=ok, reason=reason, figures=figures, engine=started.engine, reloaded=reloaded(finished.info),
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
        figures |= dict.fromkeys(RATIO_NAMES, 1.0)
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
    cv_checks = {} if baseline_id is not None else CV_OF
    for name, cv_name in cv_checks.items():
        value = figures[cv_name]
        if _above(value, CV_LIMIT):
            n = int(figures[f"{name.split('_')[0]}_windows"])
            warn(f"{FIGURES[name].words} varies {value:.1%} across {n} windows (CV above {CV_LIMIT:.0%})")
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
    base = [s.config_id for s in peers if is_baseline(s.precision)]
    return config_result(
        started, finished, windows, idle_power_w(windows, started.group), base[0] if base else None, ci_target
    )
