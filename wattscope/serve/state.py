"""A serving run as a display sees it: the serve-bench event stream folded into frozen
snapshots, live and in replay alike.

``ServeState`` is a ``RunState`` (so the power graph, the warnings, the status and the
sampler line come from the same fold as a sweep's) that also folds ``ServePhase``,
``Request`` and ``EngineSteps``. ``serving(now_ns)`` gives a ``ServeSnapshot``: the
precision and phase now, the offered and achieved rate, the requests in flight, the
finished ones, and the attribution of each load phase, computed by the report's own
``serve.analysis.analyse`` over the events so far (no second formula).

What is known when:

* A ``ServePhase`` arrives when its phase ends, so the phase now is the one after the
  last that ended, in the order the session runs them (each precision: its idle window,
  then each offered rate; from the recording's config). A running phase starts where the
  previous one ended (the session starts the next at once), so on the screen each
  precision's idle phase also holds its engine's start (a model load: the recording's
  idle window, which the report uses, begins after it). Phase marks for the power graph are folded as
  ``PhaseStarted`` at those instants.
* A ``Request`` arrives when it ends. Requests in flight are the arrivals due so far by
  the config's seeded schedule (``driver.schedule``, what the driver sends) that have not
  ended. Their energy is in the counter before their tokens are in the stream, so while
  many are in flight the running figures are fitted without part of the work; the
  phase's final figures have every request.
* The running load phase's figures are ``analyse`` of that phase from its start to now,
  recomputed at most every ``RECOMPUTE_S`` seconds (of wall clock: a fast replay costs
  no more). An ended phase's figures are final once the next phase ended or the run
  ended (by then its last samples and engine steps have arrived); until then they are
  recomputed like the running one's. Final figures equal the report's for the
  recording, computed on the same events.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
import pandas as pd

from wattscope import events as ev
from wattscope.attribution import energy_shares
from wattscope.serve.analysis import RateResult, analyse
from wattscope.serve.config import Lengths, Serve
from wattscope.serve.driver import schedule
from wattscope.state import RunState, Snapshot

RECOMPUTE_S = 1.0  # the running phase's attribution is recomputed at most this often

PhaseKey = tuple[str, int]  # (precision, load-phase index)


@dataclass(frozen=True)
class PlannedPhase:
    precision: str
    phase: str  # "idle" | "load"
    index: int  # the load phase's index into the offered rates; -1 for idle
    rate_rps: float  # 0 for idle


@dataclass(frozen=True)
class ServeSnapshot:
    """One frame of a serving run. ``power`` is the sweep-shaped snapshot of the same
    stream (status, meta, GPU, power graph, warnings, sampler)."""

    power: Snapshot
    model: str
    engine: str
    now: PlannedPhase | None  # the phase running now; None before the start or after the end
    phase_elapsed_s: float
    in_flight: int | None  # the running load phase's requests due and not yet ended
    ok: int  # the running phase's requests that ended well
    failed: int  # ... and those that failed
    current: RateResult | None  # the running load phase so far (as of ``current_ns``)
    current_ns: int | None
    rates: tuple[RateResult, ...]  # ended load phases, in the order they ran
    final: tuple[bool, ...]  # per ended phase: its figures are final
    phases_done: int
    phases_total: int

    @property
    def status(self) -> str:
        return self.power.status

    @property
    def shares(self) -> tuple[float, float, float]:
        """Idle, prefill and decode share of the running phase's energy so far (NaN
        when its fit is poor or there is none yet)."""
        if self.current is None:
            return (math.nan, math.nan, math.nan)
        return energy_shares(self.current.fit)


def serve_config(meta: Mapping[str, Any]) -> Serve | None:
    """The ``[serve]`` table a serving recording was made with (``ServeBench.to_dict``
    stores it as a dict); None where the meta lacks it or it does not read."""
    raw = meta.get("serve", {})
    d = raw.get("serve") if isinstance(raw, Mapping) else None
    if not isinstance(d, Mapping):
        return None
    try:
        known = {f.name for f in fields(Serve)}
        args = {k: v for k, v in d.items() if k in known}
        for key in ("prompt_tokens", "output_tokens"):
            if isinstance(args.get(key), Mapping):
                args[key] = Lengths(**args[key])
        for key in ("command", "precisions", "rates"):
            if key in args:
                args[key] = tuple(args[key])
        return Serve(**args)
    except (TypeError, ValueError):
        return None


def plan(meta: Mapping[str, Any]) -> tuple[PlannedPhase, ...]:
    """The phases a serving run goes through, in order: per precision its idle window,
    then each offered rate."""
    serve = serve_config(meta)
    if serve is None:
        return ()
    raw = meta.get("serve", {})
    precisions = raw.get("run_precisions") if isinstance(raw, Mapping) else None
    out: list[PlannedPhase] = []
    for p in precisions or serve.precisions:
        out.append(PlannedPhase(str(p), "idle", -1, 0.0))
        out.extend(PlannedPhase(str(p), "load", i, float(r)) for i, r in enumerate(serve.rates))
    return tuple(out)


class _Slice:
    """What ``analyse`` reads of a recording, holding only the events of the phases to
    compute (it filters requests, steps and samples by phase itself)."""

    path = "the run so far"

    def __init__(self, meta: Mapping[str, Any], events: list[ev.Event], samples: pd.DataFrame) -> None:
        self.meta = meta
        self._events = events
        self.samples = samples

    def events(self, samples: bool = True) -> Iterator[ev.Event]:
        return iter(self._events)


@dataclass
class _Job:
    key: PhaseKey
    final: bool  # an ended phase with all its events
    running: bool  # the running phase so far (else an ended one)
    slice: _Slice


class ServeState(RunState):
    """The fold of a serving run; see the module docstring. ``wall`` is the clock the
    recomputation is throttled on (injectable for tests)."""

    def __init__(self, window_s: float = 60.0, recompute_s: float = RECOMPUTE_S,
                 wall: Callable[[], float] = time.monotonic) -> None:
        super().__init__(window_s)
        self._recompute_s = recompute_s
        self._wall = wall
        self._plan: tuple[PlannedPhase, ...] = ()
        self._serve_cfg: Serve | None = None
        self._energy_gpu = 0
        self._energy_t: list[int] = []
        self._energy_j: list[float] = []
        self._ended_phases: list[ev.ServePhase] = []
        self._now_since: int | None = None  # when the running phase began
        self._idle_phase: dict[str, ev.ServePhase] = {}
        self._requests: dict[PhaseKey, list[ev.Request]] = {}
        self._steps: list[list[int]] = []
        self._load_keys: list[PhaseKey] = []  # ended load phases in order
        self._rate_results: dict[PhaseKey, RateResult] = {}
        self._final: set[PhaseKey] = set()
        self._running: tuple[PhaseKey, int, RateResult] | None = None  # key, as of, result
        self._computed_wall: float | None = None
        self._arrivals: dict[PhaseKey, list[float]] = {}

    # ------------------------------------------------------------------ folding

    def _on_run_started(self, e: ev.RunStarted) -> None:
        super()._on_run_started(e)
        self._plan = plan(e.meta)
        self._serve_cfg = serve_config(e.meta)
        gpu = e.meta.get("gpu")
        self._energy_gpu = int(gpu.get("index", 0)) if isinstance(gpu, Mapping) else 0
        self._now_since = e.t_ns
        if self._plan:
            self._on_phase_started(ev.PhaseStarted(e.t_ns, None, self._plan[0].phase))

    def _on_samples(self, e: ev.Samples) -> None:
        super()._on_samples(e)
        for r in e.rows:
            if r[1] == self._energy_gpu and not math.isnan(r[4]):
                self._energy_t.append(int(r[0]))
                self._energy_j.append(float(r[4]))

    def _on_serve_phase(self, e: ev.ServePhase) -> None:
        self._ended_phases.append(e)
        self._now_since = e.end_ns
        if e.phase == "idle":
            self._idle_phase[e.precision] = e
        else:
            key = (e.precision, e.index)
            self._load_keys.append(key)
        next_phase = self._planned(len(self._ended_phases))
        if next_phase is not None:
            self._on_phase_started(ev.PhaseStarted(e.end_ns, None, next_phase.phase))

    def _on_request(self, e: ev.Request) -> None:
        self._requests.setdefault((e.precision, e.rate_index), []).append(e)

    def _on_engine_steps(self, e: ev.EngineSteps) -> None:
        self._steps.extend(e.steps)

    def _planned(self, k: int) -> PlannedPhase | None:
        return self._plan[k] if k < len(self._plan) else None

    # ------------------------------------------------------------------ figures

    def _settled(self, k: int) -> bool:
        """Ended phase k (of ``_ended_phases``) has all its events: a later phase ended,
        or the run did."""
        return k < len(self._ended_phases) - 1 or self._t_end is not None

    def _slice(self, phase: ev.ServePhase) -> _Slice:
        idle = self._idle_phase.get(phase.precision)
        spans = [(phase.start_ns, phase.end_ns)] + ([(idle.start_ns, idle.end_ns)] if idle is not None else [])
        t = np.asarray(self._energy_t, dtype=np.int64)
        e = np.asarray(self._energy_j, dtype=float)
        keep = np.zeros(len(t), dtype=bool)
        for a, b in spans:
            keep |= (t >= a) & (t <= b)
            before = int(np.searchsorted(t, a, side="left")) - 1
            if before >= 0:  # the reading before: whether the first one inside changed, and since when
                keep[before] = True
        samples = pd.DataFrame({"t_ns": t[keep], "gpu": np.full(int(keep.sum()), self._energy_gpu), "energy_j": e[keep]})
        steps = [ev.EngineSteps(phase.end_ns, [s for s in self._steps if phase.start_ns <= s[0] < phase.end_ns])]
        events: list[ev.Event] = [*([idle] if idle is not None else []), phase,
                                  *self._requests.get((phase.precision, phase.index), []), *steps]
        return _Slice(self._meta, events, samples)

    def _jobs(self, now_ns: int) -> list[_Job]:
        """What to (re)compute now: ended phases that just became final, and, when the
        throttle allows, the others and the running phase so far."""
        due = self._computed_wall is None or self._wall() - self._computed_wall >= self._recompute_s
        jobs = []
        for k, ph in enumerate(self._ended_phases):
            if ph.phase != "load":
                continue
            key = (ph.precision, ph.index)
            if key in self._final:
                continue
            final = self._settled(k)
            if final or due or key not in self._rate_results:
                jobs.append(_Job(key, final, False, self._slice(ph)))
        now = self._now_phase()
        if now is not None and now.phase == "load" and now.precision in self._idle_phase and self._now_since is not None:
            key = (now.precision, now.index)
            if due or self._running is None or self._running[0] != key:
                so_far = ev.ServePhase(now_ns, "load", now.index, now.rate_rps, self._now_since, now_ns, now.precision)
                jobs.append(_Job(key, False, True, self._slice(so_far)))
        return jobs

    def _now_phase(self) -> PlannedPhase | None:
        if self._status != "running":
            return None
        return self._planned(len(self._ended_phases))

    def _in_flight(self, now: PlannedPhase, now_ns: int) -> int | None:
        if self._serve_cfg is None or now.phase != "load" or self._now_since is None:
            return None
        key = (now.precision, now.index)
        offsets = self._arrivals.get(key)
        if offsets is None:
            try:
                offsets = [a.offset_s for a in schedule(self._serve_cfg, now.index, now.precision)]
            except (IndexError, ValueError, ZeroDivisionError):
                return None
            self._arrivals[key] = offsets
        due = bisect_right(offsets, (now_ns - self._now_since) / 1e9)
        return max(0, due - len(self._requests.get(key, [])))

    # ------------------------------------------------------------------ snapshot

    def serving(self, now_ns: int) -> ServeSnapshot:
        """The frame at ``now_ns`` (the stream's clock: wall clock live, the position in
        replay). The analyses run outside the lock, so the stream keeps folding."""
        with self._lock:
            jobs = self._jobs(now_ns)
            if any(not j.final for j in jobs):  # the throttle restarts from this computation
                self._computed_wall = self._wall()
        done = [(j, analyse(j.slice)) for j in jobs]
        with self._lock:
            now = self._now_phase()
            for j, results in done:
                if not results:
                    continue
                if j.running:
                    self._running = (j.key, now_ns, results[0])
                else:
                    self._rate_results[j.key] = results[0]
                    if j.final:
                        self._final.add(j.key)
            return self._serving(now_ns, now)

    def _serving(self, now_ns: int, now: PlannedPhase | None) -> ServeSnapshot:
        power = self._snapshot(now_ns)
        meta = self._meta
        serve = meta.get("serve", {}) if isinstance(meta.get("serve"), Mapping) else {}
        cfg = serve.get("serve", {}) if isinstance(serve.get("serve"), Mapping) else {}
        running = self._running
        current = None
        current_ns = None
        ok = failed = 0
        if now is not None:
            key = (now.precision, now.index)
            if running is not None and running[0] == key and now.phase == "load":
                current_ns, current = running[1], running[2]
            mine = self._requests.get(key, []) if now.phase == "load" else []
            ok = sum(r.ok for r in mine)
            failed = len(mine) - ok
        keys = [k for k in self._load_keys if k in self._rate_results]
        return ServeSnapshot(
            power=power,
            model=str(cfg.get("model", "")),
            engine=str(cfg.get("engine", "")),
            now=now,
            phase_elapsed_s=(max(0.0, (now_ns - self._now_since) / 1e9)
                             if now is not None and self._now_since is not None else 0.0),
            in_flight=self._in_flight(now, now_ns) if now is not None else None,
            ok=ok,
            failed=failed,
            current=current,
            current_ns=current_ns,
            rates=tuple(self._rate_results[k] for k in keys),
            final=tuple(k in self._final for k in keys),
            phases_done=len(self._ended_phases),
            phases_total=len(self._plan),
        )
