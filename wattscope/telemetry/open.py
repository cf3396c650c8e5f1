"""Which sensor a spec opens.

A sensor lives in one process. Child processes never receive a sensor: they receive a
picklable ``SensorSpec`` and open their own with ``open_sensor`` (an NVML handle or a
shared-memory mapping cannot cross a process boundary). This module sits above the sensors
it dispatches to; ``sensor.py`` below them holds only the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wattscope.telemetry.group import SensorGroup
from wattscope.telemetry.nvml import NvmlSensor
from wattscope.telemetry.sensor import Sensor
from wattscope.telemetry.sim import SimGPU, SimRef, SimSensor, SimSpec


@dataclass(frozen=True)
class SensorSpec:
    """What a process needs to open a sensor of its own.

    ``kind`` is "nvml" (``index`` is the NVML device index) or "sim" (``sim`` is a
    ``SimRef`` to a simulated GPU's shared state, which the sensor attaches to; a
    ``SimGPU`` handle given here is stored as its ``SimRef``; or a ``SimSpec`` for a
    private simulated GPU that lives as long as the sensor). ``index`` is also the
    ``gpu`` column of the sample rows.
    """

    kind: str
    index: int = 0
    sim: SimRef | SimSpec | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("nvml", "sim"):
            raise ValueError(f"SensorSpec.kind = {self.kind!r} is not allowed; expected 'nvml' or 'sim'")
        if self.kind == "sim" and self.sim is None:
            raise ValueError("SensorSpec(kind='sim') needs sim=SimGPU, SimRef or SimSpec")
        if isinstance(self.sim, SimGPU):
            object.__setattr__(self, "sim", self.sim.ref())
        if not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"SensorSpec.index = {self.index!r} is not allowed; expected an integer >= 0")

    @classmethod
    def nvml(cls, index: int = 0) -> SensorSpec:
        return cls("nvml", index)

    @classmethod
    def simulated(cls, sim: SimGPU | SimRef | SimSpec, index: int = 0) -> SensorSpec:
        return cls("sim", index, sim.ref() if isinstance(sim, SimGPU) else sim)


def open_sensor(spec: SensorSpec | tuple) -> Sensor:
    """Open the sensor a spec describes. Also accepts ``("nvml", index)`` and
    ``("sim", SimGPU | SimRef | SimSpec)`` tuples. Raises ``NvmlUnavailable`` (with a message
    for the user) when NVML or the GPU is missing."""
    if isinstance(spec, tuple):
        kind, arg = spec
        spec = SensorSpec.nvml(arg) if kind == "nvml" else SensorSpec(kind, 0, arg)
    if spec.kind == "nvml":
        return NvmlSensor(spec.index)
    assert spec.sim is not None  # SensorSpec refuses kind "sim" without one
    return SimSensor(spec.sim, spec.index)


def open_energy_sensor(specs: Sequence[SensorSpec]) -> Sensor | SensorGroup:
    """The energy sensor of the GPUs a model runs on: the one sensor, or a group whose
    counter is the sum of theirs. A sensor that fails to open closes the ones before it."""
    if not specs:
        raise ValueError("open_energy_sensor needs at least one SensorSpec")
    sensors: list[Sensor] = []
    try:
        for spec in specs:
            sensors.append(open_sensor(spec))
    except BaseException:
        for s in sensors:
            s.close()
        raise
    return sensors[0] if len(sensors) == 1 else SensorGroup(sensors)
