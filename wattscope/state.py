"""Fold the event stream into what a display shows.

Live and replay feed the same ``RunState.apply(event)``; every display draws only
``RunState.snapshot(now_ns)``, a frozen ``Snapshot``. ``now_ns`` is the stream's clock
(wall clock live, the replay position on replay), so replay at time T shows the numbers
the live run showed at T, and a frozen clock gives identical snapshots.

``apply`` runs on the session's reader thread and ``snapshot`` on the UI's thread, so
both hold one lock. Samples cost O(batch) numpy work per batch; memory is bounded by a
ring buffer of the last ``window_s`` seconds at up to ``MAX_RATE_HZ`` per GPU.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np

from wattscope import events as ev
from wattscope.config import BASELINE_PRECISION, PRECISIONS, RunConfig
from wattscope.metrics import CV_LIMIT

MAX_RATE_HZ = 1000  # the sampler's ceiling (config.Sampler.rate_hz <= 1000)
STATUSES = ("waiting", "running", "completed", "interrupted", "failed")
ENDED = ("completed", "interrupted", "failed")
# Phase codes in traces: index into PHASES; -1 before the first PhaseStarted.
NO_PHASE = -1
_PHASE_CODE = {p: i for i, p in enumerate(ev.PHASES)}
_CV_OF = {
    "prefill_energy_j": "prefill_energy_cv",
    "decode_energy_j": "decode_energy_cv",
    "decode_tok_s": "decode_tok_s_cv",
}
_WARNINGS_KEPT = 200
_TIMELINE_KEPT = 2048


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Ratios:
    """A row's figures over its FP16 baseline (same model and batch); None where the
    baseline is missing or not a positive number."""

    prefill_energy: float | None
    decode_energy: float | None
    decode_speed: float | None


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None:
        return None
    if not math.isfinite(value) or not math.isfinite(base) or base <= 0:
        return None
    return value / base


def ratios(figures: Mapping[str, float], baseline: Mapping[str, float] | None) -> Ratios:
    """The seed study's three ratios. Energy ratios > 1 mean more energy than FP16;
    the speed ratio < 1 means slower decode than FP16."""
    b = baseline or {}
    return Ratios(
        _ratio(figures.get("prefill_energy_j"), b.get("prefill_energy_j")),
        _ratio(figures.get("decode_energy_j"), b.get("decode_energy_j")),
        _ratio(figures.get("decode_tok_s"), b.get("decode_tok_s")),
    )


def cv_flags(figures: Mapping[str, float], limit: float = CV_LIMIT) -> frozenset[str]:
    """Figures (by name) whose repeats vary by more than ``limit`` (fraction)."""
    out = set()
    for name, cv_key in _CV_OF.items():
        cv = figures.get(cv_key)
        if cv is not None and math.isfinite(cv) and cv > limit:
            out.add(name)
    return frozenset(out)


@dataclass(frozen=True)
class ConfigInfo:
    config_id: str
    model: str
    batch: int
    precision: str
    synthetic: bool
    index: int
    total: int
    repeats: int

    @property
    def label(self) -> str:
        return RunConfig(self.config_id, self.model, self.batch, self.precision).model_label


@dataclass(frozen=True)
class ResultRow:
    config_id: str
    model: str  # short label, as in the seed's table
    batch: int
    precision: str
    synthetic: bool
    ok: bool
    reason: str
    figures: Mapping[str, float]
    ratios: Ratios
    flagged: frozenset[str]  # figure names with CV > CV_LIMIT
    prefill_pct_tdp: float | None
    decode_pct_tdp: float | None
    t_ns: int


@dataclass(frozen=True)
class PhaseMark:
    """One phase change; ``seq`` counts them from 1 so a printer can tell new ones."""

    seq: int
    t_ns: int
    phase: str
    config_id: str | None
    repeat: int | None


@dataclass(frozen=True)
class WarningLine:
    seq: int
    t_ns: int
    source: str
    message: str
    config_id: str | None


@dataclass(frozen=True)
class SamplerView:
    target_hz: float
    achieved_hz: float
    jitter_p99_ms: float
    drops: int
    distinct_per_s: float | None  # of the displayed signal
    cpu_pct: float


@dataclass(frozen=True)
class GpuView:
    index: int
    name: str
    tdp_w: float | None
    latest_w: float | None
    pct_tdp: float | None
    phase_avg_w: float | None  # mean power since the current phase began
    # The graph window, oldest first: seconds relative to now (<= 0), watts, phase codes.
    t_s: np.ndarray
    power_w: np.ndarray
    phase: np.ndarray


@dataclass(frozen=True)
class Snapshot:
    now_ns: int
    started_ns: int | None  # the RunStarted time
    status: str  # one of STATUSES
    error: str
    meta: Mapping[str, Any]
    sweep_name: str
    gpu_name: str
    tdp_w: float | None
    simulated: bool
    synthetic: bool
    signal: str
    refresh_ms: float | None
    elapsed_s: float
    phase: str | None
    phase_elapsed_s: float
    config: ConfigInfo | None
    repeat: int | None
    configs_done: int
    configs_total: int
    eta_s: float | None
    window_s: float
    gpus: tuple[GpuView, ...]
    sampler: SamplerView | None
    results: tuple[ResultRow, ...]
    warnings: tuple[WarningLine, ...]
    warnings_total: int
    timeline: tuple[PhaseMark, ...]

    @property
    def gpu(self) -> GpuView | None:
        return self.gpus[0] if self.gpus else None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


# --------------------------------------------------------------------------- meta


def _first(d: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if isinstance(d, Mapping) and d.get(k) is not None:
            return d[k]
    return None


def _gpu_metas(meta: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    gpus = meta.get("gpus")
    if isinstance(gpus, list) and gpus:
        return [g for g in gpus if isinstance(g, Mapping)]
    gpu = meta.get("gpu")
    return [gpu] if isinstance(gpu, Mapping) else []


def _tdp(g: Mapping[str, Any]) -> float | None:
    v = _first(g, "tdp_w", "power_default_w", "default_w", "power_limit_default_w")
    if v is None and isinstance(g.get("power_limits_w"), Mapping):
        v = g["power_limits_w"].get("default")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def _signal(meta: Mapping[str, Any], gpu: Mapping[str, Any]) -> str:
    sampler = meta.get("sampler") if isinstance(meta.get("sampler"), Mapping) else {}
    s = _first(gpu, "signal", "power_signal") or _first(sampler, "signal", "power_signal")
    s = s or meta.get("signal")
    return s if s in ("power_w", "power_avg_w") else "power_w"


def _refresh_ms(gpu: Mapping[str, Any], signal: str) -> float | None:
    v = _first(gpu, "refresh_ms", "refresh_period_ms")
    if v is None:
        per = _first(gpu, "refresh_periods_ms", "refresh_ms_by_signal")
        if isinstance(per, Mapping):
            v = per.get(signal)
    if v is None and isinstance(gpu.get("refresh_s"), Mapping):
        sec = gpu["refresh_s"].get(signal)  # the session's measured periods, in seconds
        v = None if sec is None else 1000.0 * float(sec)
    if v is None and isinstance(gpu.get("signals"), Mapping):
        entry = gpu["signals"].get(signal)
        if isinstance(entry, Mapping):
            v = _first(entry, "refresh_ms", "refresh_period_ms")
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- ring


class _Ring:
    """The last ``capacity`` (t_ns, watts) of one GPU, oldest overwritten first."""

    def __init__(self, capacity: int) -> None:
        self.t = np.zeros(capacity, dtype=np.int64)
        self.p = np.zeros(capacity, dtype=np.float64)
        self.head = 0  # next write
        self.count = 0

    @property
    def capacity(self) -> int:
        return len(self.t)

    def extend(self, t: np.ndarray, p: np.ndarray) -> None:
        n = len(t)
        cap = self.capacity
        if n >= cap:
            t, p, n = t[-cap:], p[-cap:], cap
        end = self.head + n
        if end <= cap:
            self.t[self.head : end] = t
            self.p[self.head : end] = p
        else:
            k = cap - self.head
            self.t[self.head :] = t[:k]
            self.p[self.head :] = p[:k]
            self.t[: n - k] = t[k:]
            self.p[: n - k] = p[k:]
        self.head = end % cap
        self.count = min(cap, self.count + n)

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < self.capacity:
            return self.t[: self.count], self.p[: self.count]
        return np.roll(self.t, -self.head), np.roll(self.p, -self.head)


class _Gpu:
    def __init__(self, index: int, capacity: int) -> None:
        self.index = index
        self.ring = _Ring(capacity)
        self.latest_t = -1
        self.latest_w = math.nan
        self.phase_sum = 0.0
        self.phase_n = 0


# --------------------------------------------------------------------------- state


class RunState:
    """Thread-safe fold of the event stream. See the module docstring."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = float(window_s)
        self._capacity = int(self.window_s * MAX_RATE_HZ) + MAX_RATE_HZ
        self._lock = threading.Lock()
        self._meta: dict[str, Any] = {}
        self._t0: int | None = None
        self._t_end: int | None = None
        self._status = "waiting"
        self._error = ""
        self._gpu_meta: dict[int, Mapping[str, Any]] = {}
        self._signal = "power_w"
        self._gpus: dict[int, _Gpu] = {}
        self._phase: str | None = None
        self._phase_since: int | None = None
        self._repeat: int | None = None
        self._config: ConfigInfo | None = None
        self._config_started: dict[str, int] = {}
        self._finished: dict[str, int] = {}  # config_id -> duration ns
        self._started_info: dict[str, ConfigInfo] = {}
        self._failed_reason: dict[str, str] = {}
        self._total = 0
        self._results: dict[str, ev.ConfigResult] = {}
        self._rows: tuple[ResultRow, ...] | None = ()
        self._model_order: dict[str, int] = {}
        self._sampler: ev.SamplerStats | None = None
        self._warnings: deque[WarningLine] = deque(maxlen=_WARNINGS_KEPT)
        self._warnings_total = 0
        self._timeline: deque[PhaseMark] = deque(maxlen=_TIMELINE_KEPT)
        self._phase_seq = 0

    # ------------------------------------------------------------------ folding

    def apply(self, event: ev.Event) -> None:
        with self._lock:
            handler = getattr(self, "_on_" + event.kind, None)
            if handler is not None:
                handler(event)

    def apply_all(self, events: Iterable[ev.Event]) -> None:
        for e in events:
            self.apply(e)

    def _on_run_started(self, e: ev.RunStarted) -> None:
        self._meta = dict(e.meta)
        self._t0 = e.t_ns
        self._status = "running"
        metas = _gpu_metas(self._meta)
        for i, g in enumerate(metas):
            idx = g.get("index", i)
            self._gpu_meta[int(idx) if isinstance(idx, int) else i] = g
        self._signal = _signal(self._meta, metas[0] if metas else {})
        sweep = self._meta.get("sweep")
        if isinstance(sweep, Mapping) and isinstance(sweep.get("configs"), list):
            self._total = len(sweep["configs"])

    def _gpu(self, index: int) -> _Gpu:
        g = self._gpus.get(index)
        if g is None:
            g = self._gpus[index] = _Gpu(index, self._capacity)
        return g

    def _on_samples(self, e: ev.Samples) -> None:
        rows = e.rows
        if not rows:
            return
        n = len(rows)
        col = 2 if self._signal == "power_w" else 3
        alt = 5 - col  # the other power signal, used where the chosen one is absent
        t = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        gpu = np.fromiter((r[1] for r in rows), dtype=np.int64, count=n)
        p = np.fromiter((r[col] for r in rows), dtype=np.float64, count=n)
        bad = np.isnan(p)
        if bad.any():
            p[bad] = np.fromiter((r[alt] for r in rows), dtype=np.float64, count=n)[bad]
        for index in np.unique(gpu):
            sel = gpu == index
            ti, pi = (t, p) if sel.all() else (t[sel], p[sel])
            ok = ~np.isnan(pi)
            ti, pi = ti[ok], pi[ok]
            if not len(ti):
                continue
            g = self._gpu(int(index))
            g.ring.extend(ti, pi)
            last = int(np.argmax(ti))
            if ti[last] >= g.latest_t:
                g.latest_t, g.latest_w = int(ti[last]), float(pi[last])
            if self._phase_since is not None:
                in_phase = ti >= self._phase_since
                g.phase_sum += float(pi[in_phase].sum())
                g.phase_n += int(in_phase.sum())

    def _on_sampler_stats(self, e: ev.SamplerStats) -> None:
        self._sampler = e

    def _on_config_started(self, e: ev.ConfigStarted) -> None:
        info = ConfigInfo(
            e.config_id, e.model, e.batch, e.precision, e.synthetic, e.index, e.total, e.repeats
        )
        self._config = info
        self._started_info[e.config_id] = info
        self._config_started[e.config_id] = e.t_ns
        self._total = max(self._total, e.total)
        self._repeat = None
        self._model_order.setdefault(e.model, len(self._model_order))

    def _on_phase_started(self, e: ev.PhaseStarted) -> None:
        self._phase = e.phase
        self._phase_since = e.t_ns
        self._repeat = e.repeat
        self._phase_seq += 1
        self._timeline.append(PhaseMark(self._phase_seq, e.t_ns, e.phase, e.config_id, e.repeat))
        # Samples stamped after the phase began may already be here (they travel on
        # another queue), so the running mean starts from the ring, not from zero.
        for g in self._gpus.values():
            t, p = g.ring.ordered()
            sel = t >= e.t_ns
            g.phase_sum = float(p[sel].sum())
            g.phase_n = int(sel.sum())

    def _finish(self, config_id: str, t_ns: int) -> None:
        if config_id in self._finished:
            return
        start = self._config_started.get(config_id)
        self._finished[config_id] = t_ns - start if start is not None else 0

    def _on_config_finished(self, e: ev.ConfigFinished) -> None:
        self._finish(e.config_id, e.t_ns)
        if not e.ok:
            self._failed_reason[e.config_id] = e.reason or "failed"
            self._rows = None

    def _on_config_result(self, e: ev.ConfigResult) -> None:
        self._finish(e.config_id, e.t_ns)
        self._results[e.config_id] = e
        self._model_order.setdefault(e.model, len(self._model_order))
        self._rows = None

    def _on_warning(self, e: ev.RunWarning) -> None:
        self._warnings_total += 1
        self._warnings.append(
            WarningLine(self._warnings_total, e.t_ns, e.source, e.message, e.config_id)
        )

    def _on_run_ended(self, e: ev.RunEnded) -> None:
        if self._status in ENDED:
            return  # the first verdict stands (a session may repeat it on shutdown)
        self._status = e.status if e.status in STATUSES else "failed"
        self._error = e.reason
        self._t_end = e.t_ns

    # ------------------------------------------------------------------ snapshot

    def _tdp_of(self, index: int) -> float | None:
        g = self._gpu_meta.get(index)
        return _tdp(g) if g is not None else None

    def _result_rows(self) -> tuple[ResultRow, ...]:
        if self._rows is not None:
            return self._rows
        base: dict[tuple[str, int], Mapping[str, float]] = {}
        for r in self._results.values():
            if r.ok and r.precision == BASELINE_PRECISION:
                base[(r.model, r.batch)] = r.figures
        tdp = self._tdp_of(min(self._gpu_meta)) if self._gpu_meta else None
        rows = []
        for r in self._results.values():
            figs = dict(r.figures) if r.ok else {}
            rows.append(
                ResultRow(
                    r.config_id,
                    RunConfig(r.config_id, r.model, r.batch, r.precision).model_label,
                    r.batch,
                    r.precision,
                    r.synthetic,
                    r.ok,
                    r.reason if not r.ok else "",
                    MappingProxyType(figs),
                    ratios(figs, base.get((r.model, r.batch))) if r.ok else Ratios(None, None, None),
                    cv_flags(figs),
                    _pct(figs.get("prefill_power_w"), tdp),
                    _pct(figs.get("decode_power_w"), tdp),
                    r.t_ns,
                )
            )
        # A failed configuration the session gave no result for still gets a row.
        for cid, reason in self._failed_reason.items():
            info = self._started_info.get(cid)
            if cid in self._results or info is None:
                continue
            rows.append(
                ResultRow(cid, info.label, info.batch, info.precision, info.synthetic, False,
                          reason, MappingProxyType({}), Ratios(None, None, None), frozenset(), None, None, 0)
            )
        order = {p: i for i, p in enumerate(PRECISIONS)}
        full_model = {cid: info.model for cid, info in self._started_info.items()}
        full_model.update({cid: r.model for cid, r in self._results.items()})
        rows.sort(
            key=lambda r: (
                self._model_order.get(full_model.get(r.config_id, r.model), 1 << 30),
                r.batch,
                order.get(r.precision, len(order)),
            )
        )
        self._rows = tuple(rows)
        return self._rows

    def _gpu_view(self, g: _Gpu, now_ns: int, phase_t: np.ndarray, phase_c: np.ndarray) -> GpuView:
        t, p = g.ring.ordered()
        lo = now_ns - int(self.window_s * 1e9)
        sel = (t >= lo) & (t <= now_ns)
        t, p = t[sel], p[sel].copy()
        if len(phase_t):
            k = np.searchsorted(phase_t, t, side="right") - 1
            codes = np.where(k >= 0, phase_c[np.clip(k, 0, None)], NO_PHASE).astype(np.int8)
        else:
            codes = np.full(len(t), NO_PHASE, dtype=np.int8)
        t_s = (t - now_ns) / 1e9
        for a in (t_s, p, codes):
            a.flags.writeable = False
        meta = self._gpu_meta.get(g.index, {})
        tdp = _tdp(meta) if meta else None
        # Values are only "latest" if they are not from the future of a replay position.
        if g.latest_t <= now_ns:
            latest = g.latest_w
        else:
            latest = float(p[-1]) if len(p) else math.nan
        latest_v = latest if math.isfinite(latest) else None
        return GpuView(
            g.index,
            str(meta.get("name", f"GPU {g.index}")),
            tdp,
            latest_v,
            _pct(latest_v, tdp),
            g.phase_sum / g.phase_n if g.phase_n else None,
            t_s,
            p,
            codes,
        )

    def snapshot(self, now_ns: int) -> Snapshot:
        with self._lock:
            return self._snapshot(now_ns)

    def _snapshot(self, now_ns: int) -> Snapshot:
        meta = self._meta
        first = self._gpu_meta[min(self._gpu_meta)] if self._gpu_meta else {}
        end = self._t_end if self._t_end is not None else now_ns
        elapsed = (end - self._t0) / 1e9 if self._t0 is not None else 0.0
        marks = [m for m in self._timeline if m.t_ns <= now_ns]
        phase_t = np.fromiter((m.t_ns for m in marks), dtype=np.int64, count=len(marks))
        phase_c = np.fromiter((_PHASE_CODE.get(m.phase, NO_PHASE) for m in marks), dtype=np.int8, count=len(marks))
        indices = sorted(set(self._gpus) | set(self._gpu_meta))
        # Once the run has ended the graph stays on its last window instead of
        # scrolling into emptiness.
        graph_now = min(now_ns, self._t_end) if self._t_end is not None else now_ns
        gpus = tuple(self._gpu_view(self._gpu(i), graph_now, phase_t, phase_c) for i in indices)
        sampler = None
        if self._sampler is not None:
            s = self._sampler
            sampler = SamplerView(
                s.target_hz, s.achieved_hz, s.jitter_p99_ms, s.drops,
                s.distinct_per_s.get(self._signal), s.cpu_pct,
            )
        sweep = meta.get("sweep") if isinstance(meta.get("sweep"), Mapping) else {}
        return Snapshot(
            now_ns=now_ns,
            started_ns=self._t0,
            status=self._status,
            error=self._error,
            meta=MappingProxyType(meta),
            sweep_name=str(sweep.get("name", meta.get("name", ""))),
            gpu_name=str(first.get("name", "")),
            tdp_w=_tdp(first) if first else None,
            simulated=bool(meta.get("simulated", False)),
            synthetic=bool(meta.get("synthetic", meta.get("weights") == "synthetic")),
            signal=self._signal,
            refresh_ms=_refresh_ms(first, self._signal) if first else None,
            elapsed_s=max(0.0, elapsed),
            phase=self._phase,
            phase_elapsed_s=max(0.0, (end - self._phase_since) / 1e9) if self._phase_since is not None else 0.0,
            config=self._config,
            repeat=self._repeat,
            configs_done=len(self._finished),
            configs_total=self._total,
            eta_s=self._eta(now_ns),
            window_s=self.window_s,
            gpus=gpus,
            sampler=sampler,
            results=self._result_rows(),
            warnings=tuple(self._warnings),
            warnings_total=self._warnings_total,
            timeline=tuple(marks),
        )

    def _eta(self, now_ns: int) -> float | None:
        """Mean duration of the finished configurations times those left, less the
        time already spent on the current one."""
        if self._status != "running" or not self._finished or not self._total:
            return None
        mean_ns = sum(self._finished.values()) / len(self._finished)
        left = self._total - len(self._finished)
        eta = left * mean_ns
        cur = self._config
        if cur is not None and cur.config_id not in self._finished:
            eta -= now_ns - self._config_started[cur.config_id]
        return max(0.0, eta / 1e9)


def _pct(value: float | None, tdp: float | None) -> float | None:
    if value is None or tdp is None or not math.isfinite(value):
        return None
    return 100.0 * value / tdp
