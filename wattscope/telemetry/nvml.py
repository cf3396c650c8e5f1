"""The NVML sensor (package nvidia-ml-py, module pynvml).

What one read costs on an H100 80GB HBM3, driver 580.159.04 (medians of 2000 calls,
2026-11-27): the two power fields in one nvmlDeviceGetFieldValues call 6.6 us, each
alone 4.4 us, so both go in one call. No field id covers the SM clock, utilisation,
GPU temperature or used memory; their getters cost 2.0, 1.5, 2.0 and 7.9 us. The energy
counter costs ~3 ms (p99 ~17 ms), all of it CPU time, whether read as field 83/191 or
with nvmlDeviceGetTotalEnergyConsumption, so it is never batched with the fast fields
(it would make every power read slow) and has its own call, ``energy_j``. Instant power,
averaged power and the counter all refresh every ~100 ms.

While a counter read runs on one thread, nvmlDeviceGetMemoryInfo on another thread of
the same process waits for it (median 2.9 ms, p99 15 ms); the power fields, clock,
utilisation and temperature do not. A sampler reading the counter on a side thread at
10 Hz lost 2-4% of its 1 kHz ticks to that, so ``read()`` skips the memory query while
this sensor's counter read is in progress and repeats the last used-memory value.
"""

from __future__ import annotations

import threading
from typing import Any

from wattscope.errors import EXIT_FAILED, WattscopeError
from wattscope.telemetry.sensor import NAN, SIGNALS

FIELD_POWER_INSTANT = 186  # NVML_FI_DEV_POWER_INSTANT, mW
FIELD_POWER_AVERAGE = 185  # NVML_FI_DEV_POWER_AVERAGE, mW
_GPU_SCOPE = 0
# c_nvmlValue_t member for each NVML_VALUE_TYPE_*
_VALUE_MEMBER = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
_MIB = 1024 * 1024


class NvmlUnavailable(WattscopeError, RuntimeError):
    """NVML, its driver library or the asked-for GPU is missing; the message is for the user."""

    exit_code = EXIT_FAILED


def _pynvml() -> Any:
    """Import pynvml and initialise NVML (every success must be paired with nvmlShutdown)."""
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable(
            "NVML is unavailable: the Python package nvidia-ml-py (module pynvml) is not installed; "
            "install it with: pip install nvidia-ml-py"
        ) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        if e.value == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
            msg = "NVML is unavailable: libnvidia-ml.so was not found (no NVIDIA driver on this machine)"
        elif e.value == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
            msg = "NVML is unavailable: the NVIDIA driver is not loaded (no NVIDIA GPU, or the driver is not running)"
        else:
            msg = f"NVML is unavailable: nvmlInit failed: {e}"
        raise NvmlUnavailable(msg) from None
    return pynvml


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _field_value(fv: Any) -> float:
    return float(getattr(fv.value, _VALUE_MEMBER[fv.valueType]))


def _device_count(nv: Any) -> int:
    try:
        n = nv.nvmlDeviceGetCount()
    except nv.NVMLError as e:
        raise NvmlUnavailable(f"NVML could not count GPUs: {e}") from None
    if n == 0:
        raise NvmlUnavailable("no NVIDIA GPU found (NVML reports 0 devices)")
    return n


class NvmlSensor:
    def __init__(self, index: int = 0) -> None:
        nv = _pynvml()
        try:
            n = _device_count(nv)
            if not 0 <= index < n:
                raise NvmlUnavailable(
                    f"GPU index {index} not found: this machine has {n} NVIDIA GPU(s), indices 0..{n - 1}"
                )
        except NvmlUnavailable:
            nv.nvmlShutdown()
            raise
        self._nv = nv
        self._index = index
        self._h = nv.nvmlDeviceGetHandleByIndex(index)
        self._closed = False
        self._counter_busy = threading.Lock()  # held during a counter read
        self._last_mem = NAN
        self._absent: dict[str, str | None] = {}
        self._sources: dict[str, str] = {}
        self._probe()

    # -- probing --------------------------------------------------------------------

    def _try(self, fn: Any, *args: Any) -> tuple[Any, str | None]:
        try:
            return fn(self._h, *args), None
        except self._nv.NVMLError as e:
            return None, f"{fn.__name__}: {e}"

    def _probe(self) -> None:
        """Find which way each signal can be read, and plan read() accordingly."""
        nv = self._nv
        field_err: dict[int, str] = {}
        try:
            vals = nv.nvmlDeviceGetFieldValues(self._h, [(FIELD_POWER_INSTANT, _GPU_SCOPE), (FIELD_POWER_AVERAGE, _GPU_SCOPE)])
            for fv in vals:
                if fv.nvmlReturn != nv.NVML_SUCCESS:
                    field_err[fv.fieldId] = f"nvml field {fv.fieldId}: {nv.NVMLError(fv.nvmlReturn)}"
        except nv.NVMLError as e:
            for fid in (FIELD_POWER_INSTANT, FIELD_POWER_AVERAGE):
                field_err[fid] = f"nvml field {fid}: nvmlDeviceGetFieldValues: {e}"
        _, usage_err = self._try(nv.nvmlDeviceGetPowerUsage)

        # read() plan: which fields go in the one field call, and which getters follow.
        self._fields: list[tuple[int, int]] = []
        self._power_slot: int | None = None  # position in the field call, or None
        self._avg_slot: int | None = None
        self._power_from_usage = self._avg_from_usage = False
        for sig, fid, label in (
            ("power_w", FIELD_POWER_INSTANT, "instant"),
            ("power_avg_w", FIELD_POWER_AVERAGE, "average"),
        ):
            if fid not in field_err:
                slot = len(self._fields)
                self._fields.append((fid, _GPU_SCOPE))
                self._sources[sig] = f"nvml field {fid} ({label})"
                self._absent[sig] = None
                if sig == "power_w":
                    self._power_slot = slot
                else:
                    self._avg_slot = slot
            elif usage_err is None:
                self._sources[sig] = (
                    f"nvmlDeviceGetPowerUsage (a ~1 s average on Hopper and later; {field_err[fid]})"
                )
                self._absent[sig] = None
                if sig == "power_w":
                    self._power_from_usage = True
                else:
                    self._avg_from_usage = True
            else:
                self._absent[sig] = f"{field_err[fid]}; {usage_err}"

        nvc = nv.NVML_CLOCK_SM
        nvt = nv.NVML_TEMPERATURE_GPU
        getters = {
            "energy_j": (nv.nvmlDeviceGetTotalEnergyConsumption, (), "nvmlDeviceGetTotalEnergyConsumption (mJ)"),
            "sm_clock_mhz": (nv.nvmlDeviceGetClockInfo, (nvc,), "nvmlDeviceGetClockInfo(NVML_CLOCK_SM)"),
            "util_pct": (nv.nvmlDeviceGetUtilizationRates, (), "nvmlDeviceGetUtilizationRates().gpu"),
            "temp_c": (nv.nvmlDeviceGetTemperature, (nvt,), "nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)"),
            "mem_used_mib": (nv.nvmlDeviceGetMemoryInfo, (), "nvmlDeviceGetMemoryInfo().used"),
        }
        for sig, (fn, args, source) in getters.items():
            _, err = self._try(fn, *args)
            self._absent[sig] = err
            if err is None:
                self._sources[sig] = source
        self._energy_ok = self._absent["energy_j"] is None
        g = getters
        self._clock_ok = self._absent["sm_clock_mhz"] is None
        self._util_ok = self._absent["util_pct"] is None
        self._temp_ok = self._absent["temp_c"] is None
        self._mem_ok = self._absent["mem_used_mib"] is None
        self._get_clock, self._get_util = g["sm_clock_mhz"][0], g["util_pct"][0]
        self._get_temp, self._get_mem = g["temp_c"][0], g["mem_used_mib"][0]

    # -- Sensor ---------------------------------------------------------------------

    def signals(self) -> dict[str, str | None]:
        return {sig: self._absent[sig] for sig in SIGNALS}

    def info(self) -> dict[str, Any]:
        nv, h = self._nv, self._h

        def get(fn: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            except nv.NVMLError:
                return None

        def watts(mw: Any) -> float | None:
            return None if mw is None else mw / 1000.0

        cuda = get(nv.nvmlSystemGetCudaDriverVersion)
        cc = get(nv.nvmlDeviceGetCudaComputeCapability, h)
        pci = get(nv.nvmlDeviceGetPciInfo, h)
        mem = get(nv.nvmlDeviceGetMemoryInfo, h)
        limits = get(nv.nvmlDeviceGetPowerManagementLimitConstraints, h) or (None, None)
        uuid = get(nv.nvmlDeviceGetUUID, h)
        return {
            "index": self._index,
            "name": _text(get(nv.nvmlDeviceGetName, h)),
            "uuid": None if uuid is None else _text(uuid),
            "pci_bus_id": None if pci is None else _text(pci.busId),
            "driver_version": _text(get(nv.nvmlSystemGetDriverVersion)),
            "nvml_version": _text(get(nv.nvmlSystemGetNVMLVersion)),
            "cuda_driver_version": None if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}",
            "tdp_w": watts(get(nv.nvmlDeviceGetPowerManagementDefaultLimit, h)),
            "enforced_limit_w": watts(get(nv.nvmlDeviceGetEnforcedPowerLimit, h)),
            "min_limit_w": watts(limits[0]),
            "max_limit_w": watts(limits[1]),
            "memory_total_mib": None if mem is None else mem.total / _MIB,
            "compute_capability": None if cc is None else f"{cc[0]}.{cc[1]}",
            "simulated": False,
            "signal_sources": dict(self._sources),
        }

    def read(self) -> tuple[float, ...]:
        nv, h = self._nv, self._h
        power = avg = clock = util = temp = mem = NAN
        if self._fields:
            try:
                vals = nv.nvmlDeviceGetFieldValues(h, self._fields)
            except nv.NVMLError:
                vals = None
            if vals is not None:
                if self._power_slot is not None:
                    fv = vals[self._power_slot]
                    if fv.nvmlReturn == 0:
                        power = _field_value(fv) / 1000.0
                if self._avg_slot is not None:
                    fv = vals[self._avg_slot]
                    if fv.nvmlReturn == 0:
                        avg = _field_value(fv) / 1000.0
        if self._power_from_usage or self._avg_from_usage:
            try:
                usage = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
            except nv.NVMLError:
                usage = NAN
            if self._power_from_usage:
                power = usage
            if self._avg_from_usage:
                avg = usage
        try:
            if self._clock_ok:
                clock = float(self._get_clock(h, nv.NVML_CLOCK_SM))
        except nv.NVMLError:
            pass
        try:
            if self._util_ok:
                util = float(self._get_util(h).gpu)
        except nv.NVMLError:
            pass
        try:
            if self._temp_ok:
                temp = float(self._get_temp(h, nv.NVML_TEMPERATURE_GPU))
        except nv.NVMLError:
            pass
        if self._mem_ok:
            if self._counter_busy.acquire(blocking=False):
                try:
                    mem = self._last_mem = self._get_mem(h).used / _MIB
                except nv.NVMLError:
                    pass
                finally:
                    self._counter_busy.release()
            else:
                mem = self._last_mem  # the query would wait for the counter read
        return (power, avg, clock, util, temp, mem)

    def energy_j(self) -> float:
        if not self._energy_ok:
            return NAN
        with self._counter_busy:
            try:
                return self._nv.nvmlDeviceGetTotalEnergyConsumption(self._h) / 1000.0
            except self._nv.NVMLError:
                return NAN

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._nv.nvmlShutdown()


def _mig_on(nv: Any, h: Any) -> bool:
    """MIG mode is on (a card without MIG support, or NVML bindings too old to ask, say no)."""
    get = getattr(nv, "nvmlDeviceGetMigMode", None)
    if get is None:
        return False
    try:
        return int(get(h)[0]) == 1
    except nv.NVMLError:
        return False


def list_devices() -> list[dict[str, Any]]:
    """The machine's NVIDIA GPUs (index, name, uuid, pci_bus_id, memory_total_mib, tdp_w,
    mig: MIG mode is on).
    Raises NvmlUnavailable with a message for the user when there are none."""
    nv = _pynvml()
    try:
        out = []
        for i in range(_device_count(nv)):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            try:
                tdp: float | None = nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0
            except nv.NVMLError:
                tdp = None
            out.append(
                {
                    "index": i,
                    "name": _text(nv.nvmlDeviceGetName(h)),
                    "uuid": _text(nv.nvmlDeviceGetUUID(h)),
                    "pci_bus_id": _text(nv.nvmlDeviceGetPciInfo(h).busId),
                    "memory_total_mib": mem.total / _MIB,
                    "tdp_w": tdp,
                    "mig": _mig_on(nv, h),
                }
            )
        return out
    finally:
        nv.nvmlShutdown()

