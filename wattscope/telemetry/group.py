"""Several GPUs read as one energy sensor, for a model that spans them.

``energy_j()`` is the sum of the cards' counters, so the protocol's windows and
``wattscope.measure`` see one number; ``energy_parts_j()`` gives each card's counter, which
``counter.counter_edge`` uses to wait for every card's update and the window stores as its
parts. With simulated cards, ``gpu`` spreads the load the simulated workload sets over them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from wattscope.telemetry.sensor import Sensor


class LoadSplit:
    """The simulated cards of one model: each draws its idle power plus an equal share of
    the power above the cards' summed idle."""

    def __init__(self, gpus: Sequence[Any], idle_w: Sequence[float]) -> None:
        self._gpus = list(gpus)
        self._idle = list(idle_w)

    def set_load_w(self, w: float, t_ns: int | None = None) -> None:
        extra = (w - sum(self._idle)) / len(self._gpus)
        for gpu, idle in zip(self._gpus, self._idle):
            gpu.set_load_w(max(0.0, idle + extra), t_ns)


class SensorGroup:
    """The energy counters of several GPUs (each sensor already opened)."""

    def __init__(self, sensors: Sequence[Sensor]) -> None:
        if len(sensors) < 2:
            raise ValueError("SensorGroup needs at least two sensors; use the sensor itself for one GPU")
        self.sensors = list(sensors)

    @property
    def counter_steps(self) -> bool:
        return any(getattr(s, "counter_steps", True) for s in self.sensors)

    def energy_parts_j(self) -> tuple[float, ...]:
        return tuple(s.energy_j() for s in self.sensors)

    def energy_j(self) -> float:
        return math.fsum(self.energy_parts_j())

    def infos(self) -> list[dict[str, Any]]:
        return [s.info() for s in self.sensors]

    @property
    def gpu(self) -> LoadSplit:
        """The load setter of simulated cards (AttributeError for real ones, like a real sensor)."""
        gpus = [getattr(s, "gpu") for s in self.sensors]
        idle = [float(i.get("sim_spec", {}).get("idle_w", 0.0)) for i in self.infos()]
        return LoadSplit(gpus, idle)

    def close(self) -> None:
        for s in self.sensors:
            s.close()
