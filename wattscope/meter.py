"""A tiny measurement API for users' own code, in the spirit of Zeus:

    with wattscope.measure("my-step") as m:
        run_my_step()
    print(m.energy_j, m.duration_s, m.power_w)

or ``meter = wattscope.Meter(); meter.begin("a"); ...; result = meter.end("a")``.

Energy comes from the GPU's energy counter read at both edges. The counter refreshes
only every ~100 ms on Hopper, so windows shorter than ~2 s are coarse: repeat the work
inside one window (``Measurement.coarse`` flags such windows). Pass ``sync`` (e.g.
``torch.cuda.synchronize``) so queued GPU work is inside the window it belongs to.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from wattscope.events import now_ns
from wattscope.telemetry import Sensor, SensorSpec, open_sensor

COARSE_WINDOW_S = 2.0


@dataclass
class Measurement:
    """Filled in when the window ends; NaN until then."""

    name: str
    start_ns: int = 0
    end_ns: int = 0
    energy_j: float = math.nan
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


class Meter:
    def __init__(
        self,
        gpu: int = 0,
        *,
        sync: Callable[[], object] | None = None,
        sensor: Sensor | None = None,
    ) -> None:
        self._sensor = sensor if sensor is not None else open_sensor(SensorSpec.nvml(gpu))
        self._sync = sync
        self._open: dict[str, tuple[int, float]] = {}

    def _edge(self) -> tuple[int, float]:
        if self._sync is not None:
            self._sync()
        t = now_ns()
        return t, self._sensor.energy_j()

    def begin(self, name: str) -> None:
        if name in self._open:
            raise ValueError(f"window {name!r} is already open")
        self._open[name] = self._edge()

    def end(self, name: str) -> Measurement:
        try:
            t0, e0 = self._open.pop(name)
        except KeyError:
            raise ValueError(f"window {name!r} was never begun") from None
        t1, e1 = self._edge()
        m = Measurement(name, t0, t1, e1 - e0)
        m._done = True
        if m.coarse:
            warnings.warn(
                f"wattscope: window {name!r} lasted {m.duration_s:.3f} s; the energy counter refreshes "
                f"about every 0.1 s, so repeat the work until a window lasts >= {COARSE_WINDOW_S:g} s",
                stacklevel=2,
            )
        return m

    @contextmanager
    def window(self, name: str) -> Iterator[Measurement]:
        m = Measurement(name)
        self.begin(name)
        try:
            yield m
        finally:
            done = self.end(name)
            m.start_ns, m.end_ns, m.energy_j, m._done = done.start_ns, done.end_ns, done.energy_j, True

    def close(self) -> None:
        self._sensor.close()


@contextmanager
def measure(
    name: str, gpu: int = 0, *, sync: Callable[[], object] | None = None, sensor: Sensor | None = None
) -> Iterator[Measurement]:
    """Measure one window of your own code on GPU ``gpu`` (see the module docstring)."""
    meter = Meter(gpu, sync=sync, sensor=sensor)
    try:
        with meter.window(name) as m:
            yield m
    finally:
        if sensor is None:
            meter.close()
