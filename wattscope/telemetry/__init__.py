"""Sensors (NVML, simulated GPU) and the sampler process. No Textual, no torch."""

from wattscope.telemetry.nvml import NvmlUnavailable
from wattscope.telemetry.open import SensorSpec, open_sensor
from wattscope.telemetry.probe import measure_refresh_periods, refresh_period, time_reads
from wattscope.telemetry.sampler import SamplerProcess
from wattscope.telemetry.sensor import READ_SIGNALS, SIGNALS, Sensor
from wattscope.telemetry.sim import SimGPU, SimRef, SimSensor, SimSpec

__all__ = [
    "NvmlUnavailable",
    "READ_SIGNALS",
    "SIGNALS",
    "SamplerProcess",
    "Sensor",
    "SensorSpec",
    "SimGPU",
    "SimRef",
    "SimSensor",
    "SimSpec",
    "measure_refresh_periods",
    "open_sensor",
    "refresh_period",
    "time_reads",
]
