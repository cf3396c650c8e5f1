"""The phase-separated measurement protocol, generic over a Workload and a Sensor.

Why windows: the energy counter refreshes every ~100 ms and costs ~4 ms to read on an
H100, so the energy of one 30 ms prefill cannot be read. Each figure comes from the
counter read at the edges of a window of repeated calls lasting >= min_window_s, with
the GPU synchronised before each read.

Why rounds: the time (and so the energy) of a call drifts on a shared host by more than
the effects measured, from one window to the next and one minute to the next. So every
precision of one model and batch (a *group*) stays loaded, and the windows rotate between
them: a round is one prefill and one decode window of each precision, in an order
shuffled per round with the seed. Drift then hits every precision of a round alike and
cancels in that round's ratio to FP16; the ratios' intervals come from the rounds
(``wattscope.stats``). Rounds continue until every ratio's interval is within ci_target,
or the group's budget is spent (``rounds_enough``).

Why a reload mode: where the precisions do not fit in memory together (one runs out of
memory while others are loaded), the group still runs paired rounds, loading each
precision alone in the round's shuffled order (build, warm-up, both phases, unload), and
says so in its rows' info, a RunWarning and the results table (metrics.RELOADED).

Event order for one group:
  ConfigStarted (each row), PhaseStarted(load) + build (each row; a failure is that row's
  ConfigFinished(ok=False) at the end, the others go on; running out of memory with other
  rows loaded unloads them all and switches to reload mode, with a RunWarning),
  PhaseStarted(idle), Window(idle, group=g)          the card idle with the models loaded
                                                     (in reload mode, none loaded),
  PhaseStarted(warmup), Window(..., warmup, round=k)  whole rounds until two agree,
  PhaseStarted(prefill|decode, config_id, repeat=r), Window(..., measure, round=r)  rounds
  (in reload mode a row's windows of a round follow its own PhaseStarted(load)),
  PhaseStarted(cooldown), ConfigFinished (each row, the FP16 row first).
"""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol as TypingProtocol

from wattscope import metrics
from wattscope.config import Protocol, RunConfig, Sweep
from wattscope.events import (
    ConfigFinished,
    ConfigStarted,
    Event,
    PhaseStarted,
    RunWarning,
    Window,
    now_ns,
)
from wattscope.bench.workload import Workload, describe_exception
from wattscope.stats import paired_ratio
from wattscope.telemetry.counter import EnergySensor, counter_edge, parts_between

Emit = Callable[[Event], None]
# Builds the workload of one configuration, writing what it learns into the info dict
# as it goes, so a failed row still tells how far loading got.
Build = Callable[[RunConfig, dict[str, Any]], Workload]

# Calibration times calls one by one until this share of min_window_s has passed; it
# only sizes the first warm-up window, each later window is sized from the one before.
CALIBRATION_SHARE = 0.05

class StopFlag(TypingProtocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Stopped(Exception):
    """The stop flag was set; unwinds the sweep between two calls."""


@dataclass(frozen=True)
class PhaseSpec:
    phase: str  # "prefill" | "decode"
    call: Callable[[], None]
    min_calls: int
    steps: int  # decode steps per call, 0 for prefill
    tokens_per_call: int


def _check(stop: StopFlag) -> None:
    if stop.is_set():
        raise Stopped()


@contextmanager
def _gc_paused(paused: bool) -> Iterator[None]:
    """Python's garbage collector kept out of a window: a collection pauses the thread
    that launches the kernels, and that pause would be measured as the workload's (the
    collections put off run at the first allocation after the window)."""
    if not paused:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _window(
    spec: PhaseSpec,
    n: int,
    role: str,
    repeat: int,
    config_id: str,
    workload: Workload,
    sensor: EnergySensor,
    stop: StopFlag,
    min_window_s: float,
    group: str | None = None,
    gc_paused: bool = True,
) -> Window:
    """``n`` calls queued back to back with no host sync between them; if the card ran
    them faster than the pace ``n`` was sized from, top the window up (one sync, then as
    many calls as the remaining time needs) so it never ends short of min_window_s.
    ``gc_paused=False`` lets the collector run inside (to measure what pausing it buys)."""
    workload.synchronize()
    with _gc_paused(gc_paused):
        start = counter_edge(sensor)
        start_ns = start.t_ns
        target_ns = start_ns + int(min_window_s * 1e9)
        calls, batch = 0, n
        while True:
            for _ in range(batch):
                _check(stop)
                spec.call()
            calls += batch
            workload.synchronize()
            work_end_ns = now_ns()
            if work_end_ns >= target_ns:
                break
            per_call_ns = max((work_end_ns - start_ns) / calls, 1.0)
            batch = max(1, math.ceil((target_ns - work_end_ns) / per_call_ns))
        end = counter_edge(sensor)
        end_ns = end.t_ns
        return Window(
            t_ns=end_ns,
            config_id=config_id,
            phase=spec.phase,
            role=role,
            repeat=repeat,
            start_ns=start_ns,
            end_ns=end_ns,
            energy_start_j=start.energy_j,
            energy_end_j=end.energy_j,
            calls=calls,
            steps=spec.steps,
            tokens=spec.tokens_per_call * calls,
            work_end_ns=work_end_ns,
            round=repeat,
            group=group,
            energy_parts_j=parts_between(start, end),
        )


def calls_for(seconds_per_call: float, p: Protocol, min_calls: int) -> int:
    """Calls per window so that it lasts >= min_window_s and holds >= min_calls."""
    per_call = max(seconds_per_call, 1e-6)
    return max(min_calls, math.ceil(p.min_window_s / per_call))


def _calibrate(spec: PhaseSpec, workload: Workload, p: Protocol, stop: StopFlag) -> int:
    target_ns = int(p.min_window_s * CALIBRATION_SHARE * 1e9)
    workload.synchronize()
    t0 = now_ns()
    count = 0
    while True:
        _check(stop)
        spec.call()
        workload.synchronize()
        count += 1
        elapsed = now_ns() - t0
        if elapsed >= target_ns:
            return calls_for(elapsed / 1e9 / count, p, spec.min_calls)


def agree(a: float, b: float, tolerance: float) -> bool:
    """Two values agree within a relative tolerance."""
    ref = max(abs(a), abs(b))
    return ref == 0 or abs(a - b) <= tolerance * ref


def measure_idle(p: Protocol, sensor: EnergySensor, emit: Emit, stop: StopFlag, group: str | None = None) -> Window:
    """The idle baseline: the counter over idle_s with nothing running (with a group:
    its models loaded and the CUDA context alive, as the card idles between windows)."""
    emit(PhaseStarted(now_ns(), None, "idle"))
    start = counter_edge(sensor)
    if stop.wait(p.idle_s):
        raise Stopped()
    end = counter_edge(sensor)
    w = Window(end.t_ns, None, "idle", "idle", 1, start.t_ns, end.t_ns, start.energy_j, end.energy_j, 0, 0, 0,
               group=group, energy_parts_j=parts_between(start, end))
    emit(w)
    return w


def phases(workload: Workload, p: Protocol) -> tuple[PhaseSpec, PhaseSpec]:
    b = workload.batch
    prefill = PhaseSpec("prefill", workload.prefill, p.min_calls, 0, b * workload.prompt_len)
    # A decode call already lasts decode_steps steps; min_calls is a prefill rule.
    decode = PhaseSpec("decode", lambda: workload.decode_run(p.decode_steps), 1, p.decode_steps, b * p.decode_steps)
    return prefill, decode


@dataclass
class _Row:
    """One configuration of a group while its rounds run."""

    rc: RunConfig
    index: int
    info: dict[str, Any] = field(default_factory=dict)
    workload: Workload | None = None
    specs: dict[str, PhaseSpec] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # window size per phase
    reason: str = ""  # set when the row failed

    @property
    def ok(self) -> bool:
        """Loaded and not failed: its windows can run now."""
        return self.workload is not None and not self.reason

    @property
    def live(self) -> bool:
        """Not failed: still measured (in reload mode, loaded only for its windows)."""
        return not self.reason


def _fail(row: _Row, e: BaseException) -> None:
    row.reason = describe_exception(e)
    row.info["error"] = f"{type(e).__name__}: {e}"[:1000]
    _close(row)


def _close(row: _Row) -> None:
    if row.workload is None:
        return
    try:
        row.info.update(row.workload.run_info())
    except Exception as e:  # e.g. a CUDA error left by the failure itself
        row.info["run_info_error"] = describe_exception(e)
    finally:
        row.workload.close()
        row.workload = None


def out_of_memory(e: BaseException) -> bool:
    """An allocation failed: Python's MemoryError, or torch's OutOfMemoryError told by its
    name (this module never imports torch)."""
    return isinstance(e, MemoryError) or "OutOfMemory" in type(e).__name__


def _load(row: _Row, build: Build, p: Protocol, stop: StopFlag, emit: Emit) -> None:
    """Build the row's workload, then its warm-up calls and window sizes (``_prepare``).
    A row loaded again (reload mode) keeps the window sizes its real windows gave."""
    emit(PhaseStarted(now_ns(), row.rc.config_id, "load"))
    sized = dict(row.calls)
    row.workload = build(row.rc, row.info)
    _prepare(row, p, stop)
    row.calls.update(sized)


def _unload(row: _Row) -> None:
    """Close the row's workload and collect it at once, so that its memory is free for
    the next precision's load (the allocator reuses what the collection frees)."""
    _close(row)
    gc.collect()


def _prepare(row: _Row, p: Protocol, stop: StopFlag) -> None:
    """Warm-up calls of both phases, the decode cache, and each phase's window size."""
    assert row.workload is not None
    wl = row.workload
    prefill, decode = phases(wl, p)
    row.specs = {"prefill": prefill, "decode": decode}
    for _ in range(p.warmup_calls):
        _check(stop)
        prefill.call()
    row.calls["prefill"] = _calibrate(prefill, wl, p, stop)
    wl.prepare_decode()
    for _ in range(p.warmup_calls):
        _check(stop)
        decode.call()
    row.calls["decode"] = _calibrate(decode, wl, p, stop)


def _round(
    rows: list[_Row], k: int, role: str, rng: random.Random, p: Protocol, group: str,
    sensor: EnergySensor, emit: Emit, stop: StopFlag, reload: Build | None = None,
) -> list[Window]:
    """One window of each live row and phase, in a shuffled order. A row whose call
    fails leaves the group (its reason kept); the others go on. With ``reload`` (the
    precisions do not fit together) the rows are loaded one at a time, in a shuffled
    order: each is built, warmed up, measured in both phases (in a shuffled order) and
    unloaded."""
    if reload is None:
        items = [(row, phase) for row in rows if row.ok for phase in ("prefill", "decode")]
        rng.shuffle(items)
        return [w for row, phase in items if (w := _measure(row, phase, k, role, p, group, sensor, emit, stop))]
    order = [row for row in rows if row.live]
    rng.shuffle(order)
    out = []
    for row in order:
        _check(stop)
        try:
            _load(row, reload, p, stop, emit)
        except Stopped:
            raise
        except Exception as e:  # this precision cannot load even alone: a failed row
            _fail(row, e)
            gc.collect()
            continue
        ph = ["prefill", "decode"]
        rng.shuffle(ph)
        out += [w for phase in ph if (w := _measure(row, phase, k, role, p, group, sensor, emit, stop))]
        _unload(row)
    return out


def _measure(
    row: _Row, phase: str, k: int, role: str, p: Protocol, group: str, sensor: EnergySensor, emit: Emit,
    stop: StopFlag,
) -> Window | None:
    """One window of a loaded row; None (the row failed, its reason kept) if it fails."""
    if not row.ok:
        return None
    _check(stop)
    assert row.workload is not None
    spec = row.specs[phase]
    if role == "measure":
        emit(PhaseStarted(now_ns(), row.rc.config_id, phase, repeat=k))
    try:
        w = _window(spec, row.calls[phase], role, k, row.rc.config_id, row.workload, sensor, stop,
                    p.min_window_s, group)
    except Stopped:
        raise
    except Exception as e:  # one precision failing must not end its group
        _fail(row, e)
        return None
    emit(w)
    # Re-size from a real window: calibration timed single calls, a window runs them back to back.
    if w.work_s > 0:
        row.calls[phase] = calls_for(w.work_s / w.calls, p, spec.min_calls)
    return w


def _round_power(ws: list[Window]) -> float:
    """A round's average power: its energy over its duration (all windows together)."""
    e = [w for w in ws if math.isfinite(w.energy_j)]
    d = sum(w.duration_s for w in e)
    return sum(w.energy_j for w in e) / d if d > 0 else math.nan


def _precondition(
    rows: list[_Row], p: Protocol, group: str, rng: random.Random, sensor: EnergySensor, emit: Emit, stop: StopFlag,
    reload: Build | None,
) -> None:
    """Warm-up rounds until two consecutive ones agree in average power within
    steady_tolerance: the first windows on a card run 25-40% high, and a whole round (all
    precisions, both phases) is the work the measured rounds repeat. A RunWarning names
    the group if it never settles within max_warmup_rounds."""
    emit(PhaseStarted(now_ns(), None, "warmup"))
    previous = math.nan
    spread = math.nan
    for k in range(1, p.max_warmup_rounds + 1):
        if not any(r.live for r in rows):
            return  # every row failed: their reasons say why, steadiness means nothing here
        power = _round_power(_round(rows, k, "warmup", rng, p, group, sensor, emit, stop, reload))
        if not math.isnan(previous):
            spread = abs(power - previous) / max(abs(previous), 1e-12)
            if agree(power, previous, p.steady_tolerance):
                return
        previous = power
    detail = "" if math.isnan(spread) else f"; the last two differ by {spread:.1%}"
    emit(RunWarning(now_ns(), source="runner", message=(
        f"{group}: average power not steady after {p.max_warmup_rounds} warm-up rounds "
        f"(tolerance {p.steady_tolerance:.0%}){detail}; measuring anyway")))


def group_round_ratios(windows: list[Window], rows: list[_Row], idle_w: float | None) -> list[list[float]]:
    """Per-round ratios of every ratio the group reports: each live row's three ratios to
    the group's baseline row, one list per ratio (none without a baseline)."""
    base = next((r for r in rows if metrics.is_baseline(r.rc.precision) and r.live), None)
    if base is None:
        return []
    return [
        metrics.round_ratios(windows, r.rc.config_id, base.rc.config_id, ratio.figure, idle_w)
        for r in rows if r.live and r is not base for ratio in metrics.RATIOS
    ]


def widest_interval(ratio_rounds: Sequence[Sequence[float]]) -> float:
    """The largest relative half-width among these ratios' intervals (inf while any
    ratio has no interval yet; 0 when there is nothing to compare)."""
    widest = 0.0
    for rounds in ratio_rounds:
        hw = paired_ratio(rounds).half_width
        widest = max(widest, hw if math.isfinite(hw) else math.inf)
    return widest


def rounds_enough(ratio_rounds: Sequence[Sequence[float]], rounds: int, p: Protocol) -> bool:
    """The stopping rule of measured rounds, after ``rounds`` of them, on the per-round
    ratios of every ratio of a group (one list each): stop once min_rounds have run and
    every ratio's 95% interval is within ci_target, or at max_rounds. (The time budget,
    max_row_s, is the caller's.) Pure, so that benchmarks/stopping_coverage.py and the
    tests run this very rule on simulated rounds.

    Stopping as soon as the interval is narrow enough picks the moments when the rounds'
    sample SD happens to be low, and the stopped intervals then cover less than 95%; the
    fewer rounds the check may start from, the worse. The simulation puts the single-ratio
    coverage at 91% with min_rounds 3 at a per-round CV of 4-8%, and at 93.8-95.4% with
    min_rounds 8, the default chosen from it (README, "Why at least 8 rounds"). Looking
    later (a confirmation round, or the stop judged on an upper confidence bound of the
    SD) did not raise the coverage in trial runs of the same simulation: the selection moved to a
    later round; starting from more rounds, whose SD is rarely far below the true one, did."""
    if rounds < p.min_rounds:
        return False
    return rounds >= p.max_rounds or widest_interval(ratio_rounds) <= p.ci_target


def _load_all(rows: list[_Row], build: Build, p: Protocol, group: str, emit: Emit, stop: StopFlag) -> Build | None:
    """Load every precision of the group to stay loaded together; a row that fails to
    load fails alone. If one runs out of memory while others are loaded, they do not fit
    together: every row is unloaded and the group switches to reload mode (returns
    ``build``, which each round then loads the rows with, one at a time; None otherwise).
    Its rows' info and a RunWarning say so."""
    for row in rows:
        _check(stop)
        try:
            _load(row, build, p, stop, emit)
        except Stopped:
            raise
        except Exception as e:  # any failure of one configuration must not end the sweep
            if not (out_of_memory(e) and any(r.ok for r in rows if r is not row)):
                _fail(row, e)
                continue
            loaded = [r.rc.precision for r in rows if r.ok and r is not row]
            for r in rows:
                _unload(r)
                if r.live:
                    r.info["loading"] = metrics.RELOADED
            emit(RunWarning(now_ns(), source="runner", message=(
                f"{group}: {row.rc.precision} ran out of memory with {', '.join(loaded)} loaded; "
                f"{metrics.RELOADED}")))
            return build
    return None


def run_group(
    group: list[RunConfig],
    sweep: Sweep,
    build: Build,
    sensor: EnergySensor,
    emit: Emit,
    stop: StopFlag,
    release: Callable[[], None] = lambda: None,
) -> None:
    """One group (model x batch x engine), start to every row's ConfigFinished: load
    every precision (or, where they do not fit together, each in turn every round),
    idle baseline, warm-up rounds, measured rounds until the intervals are tight or the
    budget is spent. Only a stop request (Stopped) propagates, after every row is
    closed."""
    p = sweep.protocol
    gid = group[0].group
    total = len(sweep.configs)
    rows = [_Row(rc, sweep.configs.index(rc), {"precision": rc.precision}) for rc in group]
    for row in rows:
        rc = row.rc
        emit(ConfigStarted(now_ns(), rc.config_id, row.index, total, rc.model, rc.batch, rc.precision,
                           rc.synthetic, p.min_rounds, rc.engine, gid))
    stopped = measured = False
    rng = random.Random(f"wattscope-rounds/{p.seed}/{gid}")
    try:
        reload = _load_all(rows, build, p, gid, emit, stop)
        if any(r.live for r in rows):
            for row in rows:
                if row.ok:
                    assert row.workload is not None
                    row.workload.synchronize()
            idle_w = metrics.idle_power_w([measure_idle(p, sensor, emit, stop, gid)])
            _precondition(rows, p, gid, rng, sensor, emit, stop, reload)
            _measure_rounds(rows, p, gid, rng, idle_w, sensor, emit, stop, reload)
        measured = True
    except Stopped:
        stopped = True
    finally:
        for row in rows:
            _close(row)
        release()
    if not stopped:
        emit(PhaseStarted(now_ns(), None, "cooldown"))
        stopped = stop.wait(p.cooldown_s)
    # The baseline first, so that a consumer computing ratios has it when the others come.
    for row in sorted(rows, key=lambda r: not metrics.is_baseline(r.rc.precision)):
        reason = row.reason or ("" if measured else "stopped before the configuration finished")
        emit(ConfigFinished(now_ns(), row.rc.config_id, not reason, reason, row.info))
    if stopped:
        raise Stopped()


def _measure_rounds(
    rows: list[_Row], p: Protocol, group: str, rng: random.Random, idle_w: float | None,
    sensor: EnergySensor, emit: Emit, stop: StopFlag, reload: Build | None,
) -> None:
    """Measured rounds until ``rounds_enough`` says so or max_row_s has passed since the
    first measured round (checked only once min_rounds are done)."""
    start = now_ns()
    windows: list[Window] = []
    for k in range(1, p.max_rounds + 1):
        if not any(r.live for r in rows):
            return
        windows += _round(rows, k, "measure", rng, p, group, sensor, emit, stop, reload)
        if k < p.min_rounds:
            continue
        if rounds_enough(group_round_ratios(windows, rows, idle_w), k, p):
            return
        if (now_ns() - start) / 1e9 >= p.max_row_s:
            return


def run_protocol(
    sweep: Sweep,
    build: Build,
    sensor: EnergySensor,
    emit: Emit,
    stop: StopFlag,
    start_index: int = 0,
    release: Callable[[], None] = lambda: None,
) -> bool:
    """The whole sweep, group by group, from the group holding ``start_index`` on
    (a restarted runner redoes a group that a crash cut short). Returns False if it was
    stopped."""
    try:
        for group in sweep.groups():
            if sweep.configs.index(group[-1]) < start_index:
                continue
            _check(stop)
            run_group(group, sweep, build, sensor, emit, stop, release)
    except Stopped:
        return False
    return True
