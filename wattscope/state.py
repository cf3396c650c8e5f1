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
from wattscope.config import model_labels
from wattscope.timeline import phase_at
from wattscope.metrics import (
    NO_RATIOS,
    GpuMeta,
    RatioValue,
    cv_flags,
    is_baseline,
    percent_of_tdp,
    ratios,
    run_meta,
    sorted_rows,
)

MAX_RATE_HZ = 1000  # the sampler's ceiling (config.Sampler.rate_hz <= 1000)
STATUSES = ("waiting", "running", *ev.RUN_ENDINGS)
ENDED = ev.RUN_ENDINGS
# Phase codes in traces: index into PHASES; -1 before the first PhaseStarted.
NO_PHASE = -1
_PHASE_CODE = {p: i for i, p in enumerate(ev.PHASES)}
_WARNINGS_KEPT = 200
_TIMELINE_KEPT = 2048


# --------------------------------------------------------------------------- values


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
    label: str = ""  # how the run's tables name the model (config.model_labels)


@dataclass(frozen=True)
class ResultRow:
    config_id: str
    model: str  # the model's label in this run's table (config.model_labels)
    batch: int
    precision: str
    synthetic: bool
    ok: bool
    reason: str
    figures: Mapping[str, float]
    ratios: Mapping[str, RatioValue | None]  # by ratio name (metrics.RATIOS)
    flagged: frozenset[str]  # figure names with CV > CV_LIMIT
    prefill_pct_tdp: float | None
    decode_pct_tdp: float | None
    t_ns: int
    engine: str = "eager"
    reloaded: bool = False  # its group's precisions were loaded one at a time (metrics.RELOADED)


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
    gpu_name: str  # RunMeta.gpu_label: every measured card by name
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
        self._run = run_meta({})
        self._gpu_meta: dict[int, GpuMeta] = {}
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
        self._labels: dict[str, str] = {}
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
        self._run = run_meta(self._meta)
        self._gpu_meta = {g.index: g for g in self._run.gpus}
        configs = self._run.sweep.get("configs")
        if isinstance(configs, list):
            self._total = len(configs)
            self._labels = model_labels(str(c["model"]) for c in configs if isinstance(c, dict) and "model" in c)

    def _label(self, model: str) -> str:
        """The model's name in this run's tables: short unless another model shares it."""
        if model not in self._labels:
            self._labels = model_labels([*self._labels, model])
        return self._labels[model]

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
        col = 2 if self._run.signal == "power_w" else 3
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
            e.config_id, e.model, e.batch, e.precision, e.synthetic, e.index, e.total, e.repeats, self._label(e.model)
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
        # The rows of a group are all started before its rounds rotate between them: the
        # row shown is the one the phase names.
        if e.config_id is not None and e.config_id in self._started_info:
            self._config = self._started_info[e.config_id]
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

    def _result_rows(self) -> tuple[ResultRow, ...]:
        if self._rows is not None:
            return self._rows
        # A row's baseline: the FP16 row of its model, batch and engine.
        base: dict[tuple[str, int, str], Mapping[str, float]] = {}
        for r in self._results.values():
            if r.ok and is_baseline(r.precision):
                base[(r.model, r.batch, r.engine)] = r.figures
        tdp = self._run.tdp_w
        rows = []
        for r in self._results.values():
            figs = dict(r.figures) if r.ok else {}
            rows.append(
                ResultRow(
                    r.config_id,
                    self._label(r.model),
                    r.batch,
                    r.precision,
                    r.synthetic,
                    r.ok,
                    r.reason if not r.ok else "",
                    MappingProxyType(figs),
                    MappingProxyType(ratios(figs, base.get((r.model, r.batch, r.engine))) if r.ok else NO_RATIOS),
                    cv_flags(figs),
                    percent_of_tdp(figs.get("prefill_power_w"), tdp),
                    percent_of_tdp(figs.get("decode_power_w"), tdp),
                    r.t_ns,
                    r.engine,
                    r.reloaded,
                )
            )
        # A failed configuration the session gave no result for still gets a row.
        for cid, reason in self._failed_reason.items():
            info = self._started_info.get(cid)
            if cid in self._results or info is None:
                continue
            rows.append(
                ResultRow(cid, info.label, info.batch, info.precision, info.synthetic, False,
                          reason, MappingProxyType({}), MappingProxyType(NO_RATIOS), frozenset(), None, None, 0)
            )
        full_model = {cid: info.model for cid, info in self._started_info.items()}
        full_model.update({cid: r.model for cid, r in self._results.items()})
        self._rows = tuple(sorted_rows(
            rows, lambda r: (full_model.get(r.config_id, r.model), r.batch, r.precision, r.engine), self._model_order
        ))
        return self._rows

    def _gpu_view(self, g: _Gpu, now_ns: int, phase_t: np.ndarray, phase_c: np.ndarray) -> GpuView:
        t, p = g.ring.ordered()
        lo = now_ns - int(self.window_s * 1e9)
        sel = (t >= lo) & (t <= now_ns)
        t, p = t[sel], p[sel].copy()
        if len(phase_t):
            k = phase_at(phase_t, t)
            codes = np.where(k >= 0, phase_c[np.clip(k, 0, None)], NO_PHASE).astype(np.int8)
        else:
            codes = np.full(len(t), NO_PHASE, dtype=np.int8)
        t_s = (t - now_ns) / 1e9
        for a in (t_s, p, codes):
            a.flags.writeable = False
        meta = self._gpu_meta.get(g.index)
        tdp = meta.tdp_w if meta is not None else None
        # Values are only "latest" if they are not from the future of a replay position.
        if g.latest_t <= now_ns:
            latest = g.latest_w
        else:
            latest = float(p[-1]) if len(p) else math.nan
        latest_v = latest if math.isfinite(latest) else None
        return GpuView(
            g.index,
            meta.name if meta is not None and meta.name else f"GPU {g.index}",
            tdp,
            latest_v,
            percent_of_tdp(latest_v, tdp),
            g.phase_sum / g.phase_n if g.phase_n else None,
            t_s,
            p,
            codes,
        )

    def snapshot(self, now_ns: int) -> Snapshot:
        with self._lock:
            return self._snapshot(now_ns)

    def _snapshot(self, now_ns: int) -> Snapshot:
        run = self._run
        first = run.gpu
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
                s.distinct_per_s.get(run.signal), s.cpu_pct,
            )
        return Snapshot(
            now_ns=now_ns,
            started_ns=self._t0,
            status=self._status,
            error=self._error,
            meta=MappingProxyType(self._meta),
            sweep_name=run.sweep_name,
            gpu_name=run.gpu_label,
            tdp_w=run.tdp_w,
            simulated=run.simulated,
            synthetic=run.weights == "synthetic",
            signal=run.signal,
            refresh_ms=first.refresh_ms(run.signal) if first is not None else None,
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


