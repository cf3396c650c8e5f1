"""The sensor contract every GPU source (NVML, simulated) implements, and the signal
names the sensors and the sampler share.

Which sensor a spec opens is decided in ``telemetry/open.py``, above the sensors, so the
sensors import this contract and nothing imports them back.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

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
