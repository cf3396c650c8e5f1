"""The phase-separated measurement protocol, generic over a Workload and a Sensor.

Why windows: the energy counter refreshes every ~100 ms and costs ~4 ms to read on an
H100, so the energy of one 30 ms prefill cannot be read. Each figure comes from the
counter read at the edges of a window of repeated calls lasting >= min_window_s, with
the GPU synchronised before each read. The first long window on a cold card runs
20-35% high, so warm-up windows repeat until two consecutive ones agree.

Event order for one configuration:
  ConfigStarted, PhaseStarted(load),
  PhaseStarted(warmup), Window(prefill, warmup)..., [RunWarning if never steady],
  PhaseStarted(prefill, repeat=r), Window(prefill, measure, r)   for r in 1..repeats,
  PhaseStarted(warmup), Window(decode, warmup)..., PhaseStarted(decode, repeat=r), Window(decode, measure, r)...,
  PhaseStarted(cooldown), ConfigFinished.
The sweep starts with one idle window (phase and role "idle").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol as TypingProtocol

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

Emit = Callable[[Event], None]
# Builds the workload of one configuration, writing what it learns into the info dict
# as it goes, so a failed row still tells how far loading got.
Build = Callable[[RunConfig, dict[str, Any]], Workload]

# Calibration times calls one by one until this share of min_window_s has passed; it
# only sizes the first warm-up window, each later window is sized from the one before.
CALIBRATION_SHARE = 0.05
# Longer than any counter refresh period seen (H100: ~100 ms), short enough not to stall.
EDGE_TIMEOUT_NS = 500_000_000


class EnergySensor(TypingProtocol):
    def energy_j(self) -> float: ...


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


def _read_edge(sensor: EnergySensor) -> tuple[int, float]:
    """Counter value and the time it stands for: the middle of the (slow) read."""
    t_a = now_ns()
    e = sensor.energy_j()
    t_b = now_ns()
    return (t_a + t_b) // 2, e


def _counter_edge(sensor: EnergySensor) -> tuple[int, float]:
    """Wait for the energy counter's next update and return it with its time.

    The counter refreshes only every ~100 ms on an H100: read at an arbitrary moment,
    it lags the truth by up to one refresh, which over a 2 s window is up to +-5% of its
    energy. Taking both edges on an update makes the window span whole refresh
    periods exactly. Falls back to a plain read if the counter does not move within
    EDGE_TIMEOUT_NS (a stalled or very slow counter). A sensor whose counter is exact
    at every read says so with ``counter_steps = False`` and is read once."""
    t, first = _read_edge(sensor)
    if not getattr(sensor, "counter_steps", True):
        return t, first
    deadline = now_ns() + EDGE_TIMEOUT_NS
    while True:
        t, e = _read_edge(sensor)
        if e != first or t >= deadline or math.isnan(e):
            return t, e


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
) -> Window:
    """``n`` calls queued back to back with no host sync between them; if the card ran
    them faster than the pace ``n`` was sized from, top the window up (one sync, then as
    many calls as the remaining time needs) so it never ends short of min_window_s."""
    workload.synchronize()
    start_ns, e0 = _counter_edge(sensor)
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
    end_ns, e1 = _counter_edge(sensor)
    return Window(
        t_ns=end_ns,
        config_id=config_id,
        phase=spec.phase,
        role=role,
        repeat=repeat,
        start_ns=start_ns,
        end_ns=end_ns,
        energy_start_j=e0,
        energy_end_j=e1,
        calls=calls,
        steps=spec.steps,
        tokens=spec.tokens_per_call * calls,
        work_end_ns=work_end_ns,
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
    """Energy per call of consecutive windows agrees within a relative tolerance."""
    ref = max(abs(a), abs(b))
    return ref == 0 or abs(a - b) <= tolerance * ref


def measure_phase(
    spec: PhaseSpec,
    p: Protocol,
    config_id: str,
    workload: Workload,
    sensor: EnergySensor,
    emit: Emit,
    stop: StopFlag,
) -> None:
    """Warm-up calls, calibration, warm-up windows until two consecutive ones agree in
    energy per call (a RunWarning if they never do), then the measured windows."""
    emit(PhaseStarted(now_ns(), config_id, "warmup"))
    for _ in range(p.warmup_calls):
        _check(stop)
        spec.call()
    n = _calibrate(spec, workload, p, stop)

    # Agreement needs two windows: with fewer allowed, steadiness is not checked.
    steady = p.max_warmup_windows < 2
    previous: float | None = None
    spread = math.nan
    for k in range(1, p.max_warmup_windows + 1):
        w = _window(spec, n, "warmup", k, config_id, workload, sensor, stop, p.min_window_s)
        emit(w)
        per_call = w.energy_j / w.calls
        # Re-size from a real window: calibration timed single calls, a window runs them back to back.
        if w.work_s > 0:
            n = calls_for(w.work_s / w.calls, p, spec.min_calls)
        if previous is not None:
            spread = abs(per_call - previous) / max(abs(previous), 1e-12)
            if agree(per_call, previous, p.steady_tolerance):
                steady = True
                break
        previous = per_call
    if not steady:
        detail = f"; the last two differ by {spread:.1%}" if not math.isnan(spread) else ""
        emit(
            RunWarning(
                now_ns(),
                source="runner",
                message=(
                    f"{config_id} {spec.phase}: not steady after {p.max_warmup_windows} warm-up "
                    f"window(s) (tolerance {p.steady_tolerance:.0%}){detail}; measuring anyway"
                ),
                config_id=config_id,
            )
        )
    for r in range(1, p.repeats + 1):
        _check(stop)
        emit(PhaseStarted(now_ns(), config_id, spec.phase, repeat=r))
        emit(_window(spec, n, "measure", r, config_id, workload, sensor, stop, p.min_window_s))


def measure_idle(p: Protocol, sensor: EnergySensor, emit: Emit, stop: StopFlag) -> None:
    """The idle baseline: the counter over idle_s with nothing running."""
    emit(PhaseStarted(now_ns(), None, "idle"))
    start_ns, e0 = _counter_edge(sensor)
    if stop.wait(p.idle_s):
        raise Stopped()
    end_ns, e1 = _counter_edge(sensor)
    emit(Window(end_ns, None, "idle", "idle", 1, start_ns, end_ns, e0, e1, 0, 0, 0))


def phases(workload: Workload, p: Protocol) -> tuple[PhaseSpec, PhaseSpec]:
    b = workload.batch
    prefill = PhaseSpec("prefill", workload.prefill, p.min_calls, 0, b * workload.prompt_len)
    # A decode call already lasts decode_steps steps; min_calls is a prefill rule.
    decode = PhaseSpec("decode", lambda: workload.decode_run(p.decode_steps), 1, p.decode_steps, b * p.decode_steps)
    return prefill, decode


def run_config(
    rc: RunConfig,
    index: int,
    sweep: Sweep,
    build: Build,
    sensor: EnergySensor,
    emit: Emit,
    stop: StopFlag,
    release: Callable[[], None] = lambda: None,
) -> None:
    """One configuration, start to ConfigFinished. Any failure becomes a failed row;
    only a stop request (Stopped) propagates, after the row is closed."""
    p = sweep.protocol
    cid = rc.config_id
    emit(ConfigStarted(now_ns(), cid, index, len(sweep.configs), rc.model, rc.batch, rc.precision, rc.synthetic, p.repeats))
    emit(PhaseStarted(now_ns(), cid, "load"))
    info: dict[str, Any] = {"precision": rc.precision}
    workload: Workload | None = None
    stopped = False
    ok, reason = False, ""
    try:
        workload = build(rc, info)
        prefill, decode = phases(workload, p)
        measure_phase(prefill, p, cid, workload, sensor, emit, stop)
        _check(stop)
        workload.prepare_decode()
        workload.synchronize()
        measure_phase(decode, p, cid, workload, sensor, emit, stop)
        ok = True
    except Stopped:
        stopped, reason = True, "stopped before the configuration finished"
    except Exception as e:  # any failure of one configuration must not end the sweep
        reason = describe_exception(e)
        info["error"] = f"{type(e).__name__}: {e}"[:1000]
    finally:
        if workload is not None:
            try:
                info.update(workload.run_info())
            except Exception as e:  # e.g. a CUDA error left by the failure itself
                info["run_info_error"] = describe_exception(e)
            finally:
                workload.close()
        del workload
        release()
    if not stopped:
        emit(PhaseStarted(now_ns(), cid, "cooldown"))
        stopped = stop.wait(p.cooldown_s)
    emit(ConfigFinished(now_ns(), cid, ok, reason, info))
    if stopped:
        raise Stopped()


def run_protocol(
    sweep: Sweep,
    build: Build,
    sensor: EnergySensor,
    emit: Emit,
    stop: StopFlag,
    start_index: int = 0,
    release: Callable[[], None] = lambda: None,
) -> bool:
    """The whole sweep (from start_index on). Returns False if it was stopped."""
    try:
        if start_index == 0:
            measure_idle(sweep.protocol, sensor, emit, stop)
        for index in range(start_index, len(sweep.configs)):
            _check(stop)
            run_config(sweep.configs[index], index, sweep, build, sensor, emit, stop, release)
    except Stopped:
        return False
    return True
