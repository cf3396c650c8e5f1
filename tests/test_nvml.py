"""The NVML sensor against a fake pynvml: NaN (never 0) and a reason for unsupported
signals, the GetPowerUsage fallback, clear messages without NVML or a GPU, and the
devices report. A last test uses the real NVML and is skipped without a GPU."""

from __future__ import annotations

import math
import sys
import threading
import time
import types
from dataclasses import dataclass, field

import pytest

from wattscope.telemetry import NvmlUnavailable, SensorSpec, SimSpec, open_sensor
from wattscope.telemetry.devices import describe_devices, devices_command, format_devices
from wattscope.telemetry.nvml import NvmlSensor, list_devices
from wattscope.telemetry.sensor import READ_SIGNALS, SIGNALS

NOT_SUPPORTED = 3
LIBRARY_NOT_FOUND = 12
DRIVER_NOT_LOADED = 9


class FakeNVMLError(Exception):
    _names = {NOT_SUPPORTED: "Not Supported", LIBRARY_NOT_FOUND: "NVML Shared Library Not Found", DRIVER_NOT_LOADED: "Driver Not Loaded"}

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._names.get(self.value, f"NVML error {self.value}")


@dataclass
class FakeGPU:
    name: str = "NVIDIA H100 80GB HBM3"
    instant_mw: int = 71_500
    average_mw: int = 73_250
    usage_mw: int = 73_000
    energy_mj: int = 2_166_661
    clock: int = 1980
    util: int = 42
    temp: int = 33
    mem_used: int = 512 * 1024 * 1024
    unsupported: set = field(default_factory=set)  # field ids and getter names
    refresh_s: float | None = None  # if set, power values change every refresh_s of wall time


def make_fake_pynvml(gpus: list[FakeGPU], init_error: int | None = None) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVML_SUCCESS = 0
    m.NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    m.NVML_ERROR_LIBRARY_NOT_FOUND = LIBRARY_NOT_FOUND
    m.NVML_ERROR_DRIVER_NOT_LOADED = DRIVER_NOT_LOADED
    m.NVML_CLOCK_SM = 1
    m.NVML_TEMPERATURE_GPU = 0
    m.init_count = 0

    def nvmlInit() -> None:
        if init_error is not None:
            raise FakeNVMLError(init_error)
        m.init_count += 1

    def nvmlShutdown() -> None:
        m.init_count -= 1

    def getter(name: str, fn):  # noqa: ANN001, ANN202
        def call(h: FakeGPU, *args):  # noqa: ANN002, ANN202
            if name in h.unsupported:
                raise FakeNVMLError(NOT_SUPPORTED)
            return fn(h, *args)

        call.__name__ = name
        setattr(m, name, call)

    def tick(h: FakeGPU) -> int:
        return int(time.monotonic() / h.refresh_s) if h.refresh_s else 0

    def nvmlDeviceGetFieldValues(h: FakeGPU, ids: list):  # noqa: ANN202
        out = []
        for fid, scope in ids:
            assert scope == 0
            v = {186: h.instant_mw + 7 * (tick(h) % 5), 185: h.average_mw + 3 * (tick(h) % 7)}.get(fid, 0)
            ret = NOT_SUPPORTED if fid in h.unsupported else 0
            out.append(types.SimpleNamespace(fieldId=fid, nvmlReturn=ret, valueType=1, value=types.SimpleNamespace(uiVal=v)))
        return out

    m.nvmlInit, m.nvmlShutdown = nvmlInit, nvmlShutdown
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    m.nvmlDeviceGetFieldValues = nvmlDeviceGetFieldValues
    m.nvmlSystemGetDriverVersion = lambda: "580.159.04"
    m.nvmlSystemGetNVMLVersion = lambda: "13.580.159.04"
    m.nvmlSystemGetCudaDriverVersion = lambda: 13000
    getter("nvmlDeviceGetPowerUsage", lambda h: h.usage_mw)
    getter("nvmlDeviceGetTotalEnergyConsumption", lambda h: h.energy_mj + 7000 * tick(h))
    getter("nvmlDeviceGetClockInfo", lambda h, kind: h.clock)
    getter("nvmlDeviceGetUtilizationRates", lambda h: types.SimpleNamespace(gpu=h.util, memory=0))
    getter("nvmlDeviceGetTemperature", lambda h, sensor: h.temp)
    getter("nvmlDeviceGetMemoryInfo", lambda h: types.SimpleNamespace(used=h.mem_used, total=85520809984))
    getter("nvmlDeviceGetName", lambda h: h.name)
    getter("nvmlDeviceGetUUID", lambda h: "GPU-e8e23438-dbf1-a54c-ac93-30c0bd101ebc")
    getter("nvmlDeviceGetPciInfo", lambda h: types.SimpleNamespace(busId=b"00000000:00:06.0"))
    getter("nvmlDeviceGetCudaComputeCapability", lambda h: (9, 0))
    getter("nvmlDeviceGetPowerManagementDefaultLimit", lambda h: 700_000)
    getter("nvmlDeviceGetEnforcedPowerLimit", lambda h: 650_000)
    getter("nvmlDeviceGetPowerManagementLimitConstraints", lambda h: [200_000, 700_000])
    return m


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    def install(*gpus: FakeGPU, init_error: int | None = None) -> types.ModuleType:
        m = make_fake_pynvml(list(gpus) or [FakeGPU()], init_error)
        monkeypatch.setitem(sys.modules, "pynvml", m)
        return m

    return install


def test_all_signals_read_with_units(fake) -> None:  # noqa: ANN001
    nv = fake(FakeGPU())
    s = open_sensor(SensorSpec.nvml(0))
    assert isinstance(s, NvmlSensor)
    assert s.signals() == {sig: None for sig in SIGNALS}
    row = dict(zip(READ_SIGNALS, s.read()))
    assert row == {
        "power_w": 71.5,
        "power_avg_w": 73.25,
        "sm_clock_mhz": 1980.0,
        "util_pct": 42.0,
        "temp_c": 33.0,
        "mem_used_mib": 512.0,
    }
    assert s.energy_j() == pytest.approx(2166.661)
    info = s.info()
    assert info["tdp_w"] == 700.0 and info["enforced_limit_w"] == 650.0
    assert info["min_limit_w"] == 200.0 and info["max_limit_w"] == 700.0
    assert info["pci_bus_id"] == "00000000:00:06.0"
    assert info["cuda_driver_version"] == "13.0" and info["compute_capability"] == "9.0"
    assert info["memory_total_mib"] == pytest.approx(81559.0, abs=1)
    assert info["signal_sources"]["power_w"] == "nvml field 186 (instant)"
    assert info["signal_sources"]["power_avg_w"] == "nvml field 185 (average)"
    s.close()
    assert nv.init_count == 0  # every nvmlInit was paired with nvmlShutdown


def test_unsupported_signals_are_nan_with_the_nvml_reason(fake) -> None:  # noqa: ANN001
    fake(FakeGPU(unsupported={"nvmlDeviceGetTemperature", "nvmlDeviceGetTotalEnergyConsumption", 185}))
    s = open_sensor(("nvml", 0))
    sig = s.signals()
    assert "nvmlDeviceGetTemperature" in sig["temp_c"] and "Not Supported" in sig["temp_c"]
    assert "Not Supported" in sig["energy_j"]
    row = dict(zip(READ_SIGNALS, s.read()))
    assert math.isnan(row["temp_c"])
    assert math.isnan(s.energy_j())
    assert row["power_w"] == 71.5
    # Average power falls back to GetPowerUsage, and info says so.
    assert sig["power_avg_w"] is None
    assert row["power_avg_w"] == 73.0
    src = s.info()["signal_sources"]
    assert src["power_avg_w"].startswith("nvmlDeviceGetPowerUsage") and "field 185" in src["power_avg_w"]
    assert "temp_c" not in src
    s.close()


def test_instant_power_falls_back_to_power_usage(fake) -> None:  # noqa: ANN001
    fake(FakeGPU(unsupported={186}))
    s = open_sensor(("nvml", 0))
    assert s.signals()["power_w"] is None
    assert s.read()[0] == 73.0
    src = s.info()["signal_sources"]
    assert src["power_w"].startswith("nvmlDeviceGetPowerUsage") and "186" in src["power_w"]
    assert src["power_avg_w"] == "nvml field 185 (average)"
    s.close()


def test_power_absent_when_no_source_works(fake) -> None:  # noqa: ANN001
    fake(FakeGPU(unsupported={186, 185, "nvmlDeviceGetPowerUsage"}))
    s = open_sensor(("nvml", 0))
    reason = s.signals()["power_w"]
    assert "field 186" in reason and "nvmlDeviceGetPowerUsage" in reason and "Not Supported" in reason
    p, avg, *_ = s.read()
    assert math.isnan(p) and math.isnan(avg)
    s.close()


def test_a_field_failing_at_read_time_gives_nan(fake) -> None:  # noqa: ANN001
    gpu = FakeGPU()
    fake(gpu)
    s = open_sensor(("nvml", 0))
    gpu.unsupported = {186, "nvmlDeviceGetClockInfo"}  # e.g. the GPU fell off the bus
    p, avg, clock, *_ = s.read()
    assert math.isnan(p) and math.isnan(clock) and avg == 73.25
    s.close()


def test_read_does_not_wait_for_a_counter_read_in_progress(fake) -> None:  # noqa: ANN001
    """On an H100 the memory query waits for a concurrent counter read (~3-17 ms)."""
    gpu = FakeGPU()
    nv = fake(gpu)
    armed, entered, release = threading.Event(), threading.Event(), threading.Event()
    mem_calls = []
    real_mem, real_counter = nv.nvmlDeviceGetMemoryInfo, nv.nvmlDeviceGetTotalEnergyConsumption

    def slow_counter(h: FakeGPU) -> int:
        if not armed.is_set():
            return real_counter(h)
        entered.set()
        release.wait(5)
        return 1_000_000

    def counting_mem(h: FakeGPU):  # noqa: ANN202
        if armed.is_set():
            mem_calls.append(1)
        return real_mem(h)

    # Replaced before open: the sensor looks its getters up once, when it opens.
    nv.nvmlDeviceGetTotalEnergyConsumption = slow_counter
    nv.nvmlDeviceGetMemoryInfo = counting_mem
    s = open_sensor(("nvml", 0))
    assert s.read()[5] == 512.0
    armed.set()
    gpu.mem_used = 1024 * 1024 * 1024
    reader = threading.Thread(target=s.energy_j)
    reader.start()
    assert entered.wait(5)
    t0 = time.monotonic()
    row = s.read()
    assert time.monotonic() - t0 < 0.5
    assert row[5] == 512.0 and not mem_calls  # the last value, without querying
    release.set()
    reader.join(5)
    assert s.read()[5] == 1024.0 and mem_calls
    s.close()


def test_no_pynvml_gives_a_plain_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py"):
        open_sensor(("nvml", 0))
    code, text = devices_command(measure_s=0)
    assert code == 1 and "nvidia-ml-py" in text and "Traceback" not in text and "--sim" in text
    assert format_devices(describe_devices()) == text


@pytest.mark.parametrize("err, words", [(LIBRARY_NOT_FOUND, "no NVIDIA driver"), (DRIVER_NOT_LOADED, "driver is not loaded")])
def test_no_driver_gives_a_plain_message(fake, err: int, words: str) -> None:  # noqa: ANN001
    fake(init_error=err)
    with pytest.raises(NvmlUnavailable, match=words):
        list_devices()
    code, text = devices_command(measure_s=0)
    assert code == 1 and words in text


def test_no_gpu_and_bad_index(fake) -> None:  # noqa: ANN001
    nv = fake()
    nv.nvmlDeviceGetCount = lambda: 0
    with pytest.raises(NvmlUnavailable, match="no NVIDIA GPU found"):
        open_sensor(("nvml", 0))
    nv.nvmlDeviceGetCount = lambda: 1
    with pytest.raises(NvmlUnavailable, match="GPU index 3 not found: this machine has 1"):
        open_sensor(("nvml", 3))
    assert nv.init_count == 0


def test_list_devices(fake) -> None:  # noqa: ANN001
    nv = fake(FakeGPU(), FakeGPU(name="NVIDIA H200"))
    devs = list_devices()
    assert [d["name"] for d in devs] == ["NVIDIA H100 80GB HBM3", "NVIDIA H200"]
    assert devs[1]["index"] == 1 and devs[0]["tdp_w"] == 700.0
    assert nv.init_count == 0


def test_devices_report_measures_refresh_on_nvml(fake) -> None:  # noqa: ANN001
    fake(FakeGPU(refresh_s=0.05, unsupported={"nvmlDeviceGetTemperature"}))
    devs = describe_devices(measure_s=0.4)
    sig = devs[0]["signals"]
    assert sig["power_w"]["refresh_s"] == pytest.approx(0.05, rel=0.15)
    assert sig["energy_j"]["refresh_s"] == pytest.approx(0.05, rel=0.15)
    assert sig["sm_clock_mhz"]["refresh_s"] is None  # constant: too few changes to tell
    assert sig["temp_c"]["supported"] is False
    text = format_devices(devs)
    assert "NVIDIA H100 80GB HBM3" in text and "TDP (default) 700 W" in text and "enforced 650 W" in text
    assert "50 ms" in text and "absent" in text and "Not Supported" in text


def test_devices_report_for_the_simulated_gpu() -> None:
    code, text = devices_command(measure_s=0.5, sim=SimSpec(energy_read_s=0.0))
    assert code == 0
    assert "Simulated H100" in text and "TDP (default) 700 W" in text
    refresh_ms = {ln.split()[0]: ln.split()[1] for ln in text.splitlines() if ln.startswith("  ") and " ms " in ln}
    assert 90 <= int(refresh_ms["power_w"]) <= 110 and 90 <= int(refresh_ms["energy_j"]) <= 110


def _real_gpu() -> bool:
    try:
        return bool(list_devices())
    except NvmlUnavailable:
        return False


@pytest.mark.skipif(not _real_gpu(), reason="needs an NVIDIA GPU and driver")
def test_real_nvml_sensor() -> None:
    from wattscope.telemetry import measure_refresh_periods

    s = open_sensor(("nvml", 0))
    try:
        info = s.info()
        assert info["tdp_w"] and info["tdp_w"] > 50
        power = s.read()[0]
        assert math.isnan(power) or 5 < power < 2000
        e1 = s.energy_j()
        assert math.isnan(e1) or e1 > 0
        periods = measure_refresh_periods(s, duration_s=1.0)
        if periods["power_avg_w"] is not None:
            assert 0.005 < periods["power_avg_w"] < 2.0
    finally:
        s.close()
