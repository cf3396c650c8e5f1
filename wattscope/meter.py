"""A tiny measurement API for users' own code, in the spirit of Zeus:

    with wattscope.measure("my-step") as m:
        run_my_step()
    print(m.energy_j, m.duration_s, m.power_w)

    @wattscope.measure("step", gpus=[0, 1])   # a model split over two GPUs
    def step(): ...
    step(); step.last.energy_j, step.measurements

or ``meter = wattscope.Meter(); meter.begin("a"); ...; result = meter.end("a")``.

GPUs are named as the calling process sees them (CUDA ordinals, after
CUDA_VISIBLE_DEVICES) and bound to their NVML counters by ``telemetry.gpu_map``, exactly
as ``wattscope run`` binds them. Each edge waits for every GPU's counter to update
(``telemetry.counter.counter_edge``, the protocol's edge), so a window spans whole
refresh periods; with several GPUs the energy is their sum and ``energy_parts_j`` each
one's. The counter refreshes only every ~100 ms on Hopper, so a window also starts up
to one refresh after ``begin`` and ends up to one after ``end``, and windows shorter
than ~2 s are coarse: repeat the work inside one window (``Measurement.coarse`` flags
such windows). Pass ``sync`` (e.g. ``torch.cuda.synchronize``) so queued GPU work is
inside the window it belongs to. Windows nest: each reads the counters at its own edges.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ContextDecorator, contextmanager
from dataclasses import dataclass, field
from typing import Any

from wattscope.telemetry import Sensor, SensorSpec
from wattscope.telemetry.counter import Edge, EnergySensor, counter_edge, parts_between
from wattscope.telemetry.gpu_map import GpuBinding, resolve_machine
from wattscope.telemetry.open import open_energy_sensor

COARSE_WINDOW_S = 2.0


@dataclass
class Measurement:
    """Filled in when the window ends; NaN until then. ``energy_parts_j`` holds each
    GPU's energy when several were measured (empty for one)."""

    name: str
    start_ns: int = 0
    end_ns: int = 0
    energy_j: float = math.nan
    energy_parts_j: tuple[float, ...] = ()
    _done: bool = field(default=False, repr=False)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9 if self._done else math.nan

    @property
    def power_w(self) -> float:
        return self.energy_j / self.duration_s if self._done and self.duration_s > 0 else math.nan

    @property
    def coarse(self) -> bool:
        """True when the window is short against the counter's refresh period, so its
        energy may be off by one refresh's worth either way."""
        return self.duration_s < COARSE_WINDOW_S

    def _fill(self, start: Edge, end: Edge) -> None:
        self.start_ns, self.end_ns = start.t_ns, end.t_ns
        self.energy_j = end.energy_j - start.energy_j
        self.energy_parts_j = parts_between(start, end)
        self._done = True


def _ordinals(gpus: int | Sequence[int]) -> tuple[int, ...]:
    return (gpus,) if isinstance(gpus, int) else tuple(gpus)


class Meter:
    """Energy windows on the GPUs ``gpus`` (CUDA ordinals; one or several). ``sensor``
    replaces the GPUs' counters (a simulated GPU in tests; it is not closed here)."""

    def __init__(
        self,
        gpus: int | Sequence[int] = 0,
        *,
        sync: Callable[[], object] | None = None,
        sensor: EnergySensor | Sensor | None = None,
    ) -> None:
        self.bindings: tuple[GpuBinding, ...] = ()
        self._owned = sensor is None
        if sensor is None:
            self.bindings = resolve_machine(_ordinals(gpus), where="wattscope.measure gpus")
            sensor = open_energy_sensor([SensorSpec.nvml(b.nvml_index) for b in self.bindings])
        self._sensor: Any = sensor
        self._sync = sync
        self._open: dict[str, Edge] = {}

    def edge(self) -> Edge:
        """Synchronise, then wait for the counters' next update."""
        if self._sync is not None:
            self._sync()
        return counter_edge(self._sensor)

    def begin(self, name: str) -> None:
        if name in self._open:
            raise ValueError(f"window {name!r} is already open")
        self._open[name] = self.edge()

    def end(self, name: str) -> Measurement:
        try:
            start = self._open.pop(name)
        except KeyError:
            raise ValueError(f"window {name!r} was never begun") from None
        m = Measurement(name)
        m._fill(start, self.edge())
        _warn_if_coarse(m)
        return m

    @contextmanager
    def window(self, name: str) -> Iterator[Measurement]:
        m = Measurement(name)
        self.begin(name)
        try:
            yield m
        finally:
            done = self.end(name)
            m.start_ns, m.end_ns, m.energy_j, m.energy_parts_j, m._done = (
                done.start_ns, done.end_ns, done.energy_j, done.energy_parts_j, True)

    def close(self) -> None:
        if self._owned:
            self._sensor.close()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warn_if_coarse(m: Measurement) -> None:
    if m.coarse:
        warnings.warn(
            f"wattscope: window {m.name!r} lasted {m.duration_s:.3f} s; the energy counter refreshes "
            f"about every 0.1 s, so repeat the work until a window lasts >= {COARSE_WINDOW_S:g} s",
            stacklevel=3,
        )


class measure(ContextDecorator):
    """One window of your own code on ``gpus`` (see the module docstring): a context
    manager that gives its ``Measurement``, or a decorator that measures every call
    (``measurements`` keeps them, ``last`` the latest). Entries nest, also recursive
    calls of a decorated function; the GPUs' counters stay open while any is inside."""

    def __init__(
        self,
        name: str,
        gpus: int | Sequence[int] = 0,
        *,
        sync: Callable[[], object] | None = None,
        sensor: EnergySensor | Sensor | None = None,
    ) -> None:
        self.name = name
        self.measurements: list[Measurement] = []
        self._gpus = _ordinals(gpus)
        self._sync = sync
        self._sensor = sensor
        self._meter: Meter | None = None
        self._stack: list[tuple[Measurement, Edge]] = []

    @property
    def last(self) -> Measurement | None:
        return self.measurements[-1] if self.measurements else None

    def __enter__(self) -> Measurement:
        if self._meter is None:
            self._meter = Meter(self._gpus, sync=self._sync, sensor=self._sensor)
        m = Measurement(self.name)
        self._stack.append((m, self._meter.edge()))
        return m

    def __exit__(self, *exc: object) -> None:
        assert self._meter is not None  # __enter__ made it
        m, start = self._stack.pop()
        try:
            m._fill(start, self._meter.edge())
        finally:
            if not self._stack:
                self._meter.close()
                self._meter = None
        self.measurements.append(m)
        _warn_if_coarse(m)
