"""The sensor contract every GPU source (NVML, simulated) implements.

A sensor lives in one process. Child processes never receive a sensor: they receive a
picklable ``SensorSpec`` and open their own with ``open_sensor`` (an NVML handle or a
shared-memory mapping cannot cross a process boundary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from wattscope.telemetry.sim import SimGPU, SimRef, SimSpec

# Every signal a sensor may offer, in SAMPLE_COLUMNS order (energy included).
SIGNALS = ("power_w", "power_avg_w", "energy_j", "sm_clock_mhz", "util_pct", "temp_c", "mem_used_mib")
# The signals ``read()`` returns, in this order (energy has its own, slower call).
READ_SIGNALS = ("power_w", "power_avg_w", "sm_clock_mhz", "util_pct", "temp_c", "mem_used_mib")

NAN = float("nan")


@runtime_checkable
class Sensor(Protocol):
    def info(self) -> dict[str, Any]:
        """index, name, uuid, pci_bus_id, driver_version, nvml_version, cuda_driver_version,
        tdp_w (default limit), enforced_limit_w, min_limit_w, max_limit_w, memory_total_mib,
        compute_capability, signal_sources (signal -> where its value comes from)."""
        ...

    def signals(self) -> dict[str, str | None]:
        """signal -> None if supported, else the reason it is absent."""
        ...

    def read(self) -> tuple[float, ...]:
        """One reading of READ_SIGNALS, in that order; absent signals are NaN, never 0."""
        ...

    def energy_j(self) -> float:
        """The total energy counter in joules (slow on Hopper: ~3 ms, p99 ~17 ms); NaN if absent."""
        ...

    def close(self) -> None: ...


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
        from wattscope.telemetry.sim import SimGPU

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
        return cls("sim", index, sim)


def open_sensor(spec: SensorSpec | tuple) -> Sensor:
    """Open the sensor a spec describes. Also accepts ``("nvml", index)`` and
    ``("sim", SimGPU | SimRef | SimSpec)`` tuples. Raises ``NvmlUnavailable`` (with a message
    for the user) when NVML or the GPU is missing."""
    if isinstance(spec, tuple):
        kind, arg = spec
        spec = SensorSpec.nvml(arg) if kind == "nvml" else SensorSpec(kind, 0, arg)
    if spec.kind == "nvml":
        from wattscope.telemetry.nvml import NvmlSensor

        return NvmlSensor(spec.index)
    from wattscope.telemetry.sim import SimSensor

    return SimSensor(spec.sim, spec.index)
