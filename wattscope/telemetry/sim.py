"""A simulated GPU whose state lives in shared memory.

The runner process sets the true power (``set_load_w``); the sampler process, which
opened its own ``SimSensor`` from a pickled ``SimGPU`` handle, sees it. Like an H100
the sensor refreshes only every ``refresh_s``: time is cut into ticks
``k = (t - t0) // refresh``, and every value is held constant within a tick. The power
of tick k is the load in effect at the tick's start plus Gaussian noise drawn from a
hash of (seed, k), so the same seed and load timeline give the same readings. The
energy counter is the sum of the completed ticks' power times the tick length: it steps
once per tick and equals the integral of the sensor power exactly.

Whoever reads or writes first after a tick boundary advances the shared state through
the ticks that passed, under a lock (``flock`` on the segment, which the kernel releases
if a holder is killed, plus a thread lock for threads sharing one mapping). Reads within
a tick that is already computed take no lock: a sequence counter, odd while the state is
being written, tells a reader to retry (a seqlock), which keeps a sampler read cheap.
"""

from __future__ import annotations

import fcntl
import math
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing import shared_memory
from typing import Any

from wattscope.events import now_ns
from wattscope.telemetry.sensor import SIGNALS

_M64 = (1 << 64) - 1

# Shared layout: int64s then doubles.
_I_T0, _I_TICK, _I_SEQ = 0, 1, 2
_D_LOAD, _D_MEM, _D_POWER, _D_AVG, _D_ENERGY, _D_TEMP, _D_CLOCK, _D_UTIL = range(8)
_N_INT, _N_DBL = 3, 8
_SIZE = 8 * (_N_INT + _N_DBL)


@dataclass(frozen=True)
class SimSpec:
    seed: int = 0
    name: str = "Simulated H100"
    idle_w: float = 72.0
    tdp_w: float = 700.0
    refresh_s: float = 0.1
    noise_w: float = 1.5
    min_limit_w: float = 200.0
    avg_window_s: float = 1.0  # power_avg_w: exponential average over about this long
    energy_read_s: float = 0.003  # what a counter read costs (an H100's median is ~3 ms)
    memory_total_mib: float = 81559.0
    idle_mem_mib: float = 1.0
    idle_clock_mhz: float = 345.0
    max_clock_mhz: float = 1980.0
    ambient_c: float = 30.0
    thermal_tau_s: float = 30.0

    def __post_init__(self) -> None:
        checks = {
            "refresh_s": self.refresh_s > 0,
            "idle_w": self.idle_w >= 0,
            "tdp_w": self.tdp_w > self.idle_w,
            "noise_w": self.noise_w >= 0,
            "avg_window_s": self.avg_window_s > 0,
            "energy_read_s": self.energy_read_s >= 0,
            "thermal_tau_s": self.thermal_tau_s > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"SimSpec.{key} = {getattr(self, key)!r} is not allowed")


def _mix(x: int) -> int:
    """splitmix64: a cheap integer hash that is identical in every process and run."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def noise(seed: int, tick: int) -> float:
    """A standard normal value that depends only on (seed, tick)."""
    h1 = _mix(_mix(seed & _M64) ^ (tick & _M64))
    h2 = _mix(h1)
    u1 = ((h1 >> 11) + 1) / 2.0**53
    u2 = (h2 >> 11) / 2.0**53
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@dataclass(frozen=True)
class SimRef:
    """A picklable reference to a simulated GPU's shared state; ``attach()`` opens it.
    Unlike a handle, unpickling it opens nothing, so a process can report a segment
    that is gone instead of failing while its arguments are unpickled."""

    spec: SimSpec
    name: str

    def attach(self) -> SimGPU:
        return SimGPU._attach(self.spec, self.name)


class SimGPU:
    """Handle to a simulated GPU's shared state. ``create`` makes the segment (this
    handle owns it and unlinks it on ``close``); pickling a handle and unpickling it in
    another process attaches to the same segment."""

    def __init__(self, spec: SimSpec, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self.spec = spec
        self._shm = shm
        self._owner = owner
        buf = shm.buf
        assert buf is not None  # an open segment always has its buffer
        self._ints = buf[: 8 * _N_INT].cast("q")
        self._dbls = buf[8 * _N_INT : _SIZE].cast("d")
        # flock needs the segment's descriptor; SharedMemory keeps it (privately) here on POSIX.
        self._fd: int = getattr(shm, "_fd")
        self._tlock = threading.Lock()
        self._refresh_ns = round(spec.refresh_s * 1e9)
        self._closed = False

    @classmethod
    def create(cls, spec: SimSpec | None = None) -> SimGPU:
        spec = spec or SimSpec()
        shm = shared_memory.SharedMemory(create=True, size=_SIZE)
        gpu = cls(spec, shm, owner=True)
        gpu._ints[_I_T0] = now_ns()
        gpu._ints[_I_TICK] = 0
        gpu._ints[_I_SEQ] = 0
        d = gpu._dbls
        d[_D_LOAD] = spec.idle_w
        d[_D_MEM] = spec.idle_mem_mib
        d[_D_ENERGY] = 0.0
        d[_D_AVG] = spec.idle_w
        d[_D_TEMP] = spec.ambient_c + gpu._temp_rise(spec.idle_w)
        gpu._refresh_tick(0)
        return gpu

    @classmethod
    def _attach(cls, spec: SimSpec, name: str) -> SimGPU:
        return cls(spec, shared_memory.SharedMemory(name=name), owner=False)

    def attach(self) -> SimGPU:
        """A second, independent handle to the same state (closing it leaves this one open)."""
        return SimGPU._attach(self.spec, self._shm.name)

    def ref(self) -> SimRef:
        return SimRef(self.spec, self._shm.name)

    def __reduce__(self) -> tuple:
        return (SimGPU._attach, (self.spec, self._shm.name))

    @property
    def name(self) -> str:
        """The shared-memory segment's name."""
        return self._shm.name

    @property
    def t0_ns(self) -> int:
        return int(self._ints[_I_T0])

    @property
    def load_w(self) -> float:
        return self._dbls[_D_LOAD]

    def tick_at(self, t_ns: int) -> int:
        return (t_ns - self.t0_ns) // self._refresh_ns

    # -- the model ------------------------------------------------------------------

    def _frac(self, load_w: float) -> float:
        s = self.spec
        return min(1.0, max(0.0, (load_w - s.idle_w) / (s.tdp_w - s.idle_w)))

    def _temp_rise(self, load_w: float) -> float:
        return 5.0 + 50.0 * self._frac(load_w)

    def _refresh_tick(self, k: int) -> None:
        """Compute the sensor values of tick k from the load in effect now."""
        s, d = self.spec, self._dbls
        load = d[_D_LOAD]
        d[_D_POWER] = round(max(0.0, load + s.noise_w * noise(s.seed, k)), 3)  # NVML reports mW
        a = 1.0 - math.exp(-s.refresh_s / s.avg_window_s)
        d[_D_AVG] += (d[_D_POWER] - d[_D_AVG]) * a
        b = 1.0 - math.exp(-s.refresh_s / s.thermal_tau_s)
        d[_D_TEMP] += (s.ambient_c + self._temp_rise(load) - d[_D_TEMP]) * b
        f = self._frac(load)
        # Clocks jump to boost as soon as there is work and sag a little near the power cap.
        if f < 0.01:
            clock = s.idle_clock_mhz
        else:
            clock = s.max_clock_mhz - 240.0 * max(0.0, f - 0.8) / 0.2
        d[_D_CLOCK] = 15.0 * round(clock / 15.0)
        d[_D_UTIL] = float(round(100.0 * min(1.0, 2.5 * f)))

    def _advance(self, t_ns: int) -> None:
        """Close out every tick that started by t_ns (caller holds the lock)."""
        k = self.tick_at(t_ns)
        last = int(self._ints[_I_TICK])
        if k <= last:
            return
        d = self._dbls
        r = self.spec.refresh_s
        self._ints[_I_SEQ] += 1
        for j in range(last + 1, k + 1):
            d[_D_ENERGY] += d[_D_POWER] * r
            self._refresh_tick(j)
        self._ints[_I_TICK] = k
        self._ints[_I_SEQ] += 1

    def _values(self) -> tuple[float, ...]:
        d = self._dbls
        return (d[_D_POWER], round(d[_D_AVG], 3), d[_D_CLOCK], d[_D_UTIL], float(round(d[_D_TEMP])), d[_D_MEM], d[_D_ENERGY])

    def _state(self, t_ns: int | None) -> tuple[float, ...]:
        """READ_SIGNALS values then the counter, as of t_ns (default now)."""
        if self._closed:
            raise ValueError(f"simulated GPU {self.name} is closed")
        t = now_ns() if t_ns is None else t_ns
        ints = self._ints
        seq = ints[_I_SEQ]
        if not seq & 1 and self.tick_at(t) <= ints[_I_TICK]:
            vals = self._values()
            if ints[_I_SEQ] == seq:
                return vals
        with self._locked():
            self._advance(t)
            return self._values()

    def _locked(self) -> _Lock:
        if self._closed:
            raise ValueError(f"simulated GPU {self.name} is closed")
        return _Lock(self._tlock, self._fd)

    # -- API ------------------------------------------------------------------------

    def set_load_w(self, w: float, t_ns: int | None = None) -> None:
        """Set the true power from now (or t_ns) on; it shows from the next tick."""
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"set_load_w({w!r}): expected a finite power in W >= 0")
        with self._locked():
            self._advance(now_ns() if t_ns is None else t_ns)
            self._dbls[_D_LOAD] = float(w)

    def set_mem_used_mib(self, mib: float, t_ns: int | None = None) -> None:
        if not (isinstance(mib, (int, float)) and 0 <= mib <= self.spec.memory_total_mib):
            raise ValueError(f"set_mem_used_mib({mib!r}): expected 0..{self.spec.memory_total_mib} MiB")
        with self._locked():
            self._advance(now_ns() if t_ns is None else t_ns)
            self._ints[_I_SEQ] += 1
            self._dbls[_D_MEM] = float(mib)
            self._ints[_I_SEQ] += 1

    def read(self, t_ns: int | None = None) -> tuple[float, ...]:
        """Sensor values in READ_SIGNALS order as of now or t_ns."""
        return self._state(t_ns)[:6]

    def energy_j(self, t_ns: int | None = None) -> float:
        """The energy counter: the integral of the sensor power over the completed ticks."""
        return self._state(t_ns)[6]

    def close(self) -> None:
        """Detach; the creating handle also removes the segment."""
        if self._closed:
            return
        self._closed = True
        self._ints.release()
        self._dbls.release()
        self._shm.close()
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> SimGPU:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lock:
    __slots__ = ("_t", "_fd")

    def __init__(self, tlock: threading.Lock, fd: int) -> None:
        self._t, self._fd = tlock, fd

    def __enter__(self) -> None:
        self._t.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._t.release()
            raise

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._t.release()


class SimSensor:
    """The Sensor view of a simulated GPU. Given a ``SimGPU`` or ``SimRef`` it attaches a
    handle of its own; given a ``SimSpec`` it creates a private GPU that lives as long as
    the sensor."""

    def __init__(self, sim: SimGPU | SimRef | SimSpec, index: int = 0) -> None:
        self._gpu = SimGPU.create(sim) if isinstance(sim, SimSpec) else sim.attach()
        self._index = index

    @property
    def gpu(self) -> SimGPU:
        return self._gpu

    def info(self) -> dict[str, Any]:
        s = self._gpu.spec
        return {
            "index": self._index,
            "name": s.name,
            "uuid": f"SIM-{s.seed & _M64:016x}",
            "pci_bus_id": "simulated",
            "driver_version": "simulated",
            "nvml_version": None,
            "cuda_driver_version": None,
            "tdp_w": s.tdp_w,
            "enforced_limit_w": s.tdp_w,
            "min_limit_w": s.min_limit_w,
            "max_limit_w": s.tdp_w,
            "memory_total_mib": s.memory_total_mib,
            "compute_capability": "9.0",
            "simulated": True,
            "sim_spec": asdict(s),
            "signal_sources": {sig: "simulated" for sig in SIGNALS},
        }

    def signals(self) -> dict[str, str | None]:
        return {sig: None for sig in SIGNALS}

    def read(self) -> tuple[float, ...]:
        return self._gpu.read()

    def energy_j(self) -> float:
        # Costs what an H100's counter read costs, so the sampler's scheduling is exercised.
        if self._gpu.spec.energy_read_s:
            time.sleep(self._gpu.spec.energy_read_s)
        return self._gpu.energy_j()

    def close(self) -> None:
        self._gpu.close()

