"""Which GPUs a run measures: one resolution, from the user's terms to NVML handles.

The user names GPUs as their own process sees them: CUDA ordinals (``cuda:N``), after
``CUDA_VISIBLE_DEVICES`` has hidden and reordered the machine's cards. NVML ignores that
variable and numbers every card of the machine its own way. A run that placed the model
by one numbering and read the energy by the other would measure an idle card, silently,
so every consumer (the runner's ``cuda:N``, the sampler's and the window edges' NVML
handles, ``wattscope.measure``) takes the ``GpuBinding`` made here, which pairs the two
by UUID (or PCI bus id).

Sources, lowest first: the machine's cards as NVML lists them (``PhysicalGpu``), the
``CUDA_VISIBLE_DEVICES`` value parsed by CUDA's rules (an index into the machine's list,
or a ``GPU-`` UUID or a unique prefix of one), and, where the CUDA driver library is
present, the driver's own list of the devices this process sees (``CudaDevice``), which
decides the order (``CUDA_DEVICE_ORDER``) where the two differ. CUDA silently keeps only
the entries before the first one it cannot use; here such an entry is an error that
names it, as is a MIG instance (NVML has no per-instance energy counter).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wattscope.errors import WattscopeError

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


class GpuMapError(WattscopeError):
    """A GPU the user named cannot be measured (missing, MIG, unmappable); exit 2."""


@dataclass(frozen=True)
class PhysicalGpu:
    """One card of the machine as NVML lists it."""

    index: int  # NVML index
    uuid: str  # "GPU-..." (a simulated card: "SIM-...")
    pci_bus_id: str
    name: str = ""
    mig: bool = False  # MIG mode is on: only its instances run CUDA work


@dataclass(frozen=True)
class CudaDevice:
    """One device as the CUDA driver enumerates it in this process."""

    ordinal: int
    uuid: str  # "GPU-..." or, for a MIG instance, "MIG-..."
    pci_bus_id: str


@dataclass(frozen=True)
class GpuBinding:
    """A measured GPU: where the model runs (``device``) and what the sensors open."""

    ordinal: int  # CUDA ordinal in the user's process (and in the runner, which inherits its environment)
    uuid: str
    pci_bus_id: str
    nvml_index: int
    name: str = ""

    @property
    def device(self) -> str:
        return f"cuda:{self.ordinal}"

    def to_meta(self) -> dict[str, Any]:
        return {"cuda_ordinal": self.ordinal, "uuid": self.uuid, "pci_bus_id": self.pci_bus_id,
                "nvml_index": self.nvml_index, "name": self.name}


def _pci_key(bus_id: str) -> tuple[int, ...] | None:
    """'00000000:1B:00.0' (NVML) and '0000:1b:00.0' (CUDA) name the same slot."""
    try:
        domain, bus, rest = bus_id.strip().split(":")
        dev, fn = rest.split(".")
        return int(domain, 16), int(bus, 16), int(dev, 16), int(fn, 16)
    except ValueError:
        return None


def _describe(gpus: Sequence[PhysicalGpu]) -> str:
    return f"this machine has {len(gpus)} GPU(s)" + (f", NVML indices 0..{len(gpus) - 1}" if gpus else "")


def _mig_error(what: str) -> GpuMapError:
    return GpuMapError(f"{what} is a MIG instance (or a card in MIG mode); NVML has no per-instance energy "
                       "counter, so wattscope cannot measure it: name a whole GPU with MIG mode off")


def visible_devices(value: str | None, gpus: Sequence[PhysicalGpu]) -> list[PhysicalGpu]:
    """The machine's cards in the order a process with ``CUDA_VISIBLE_DEVICES=value``
    numbers them (None: the variable is unset, every card in NVML order). Raises
    GpuMapError naming the first entry that names no card, a MIG instance, or a card
    already listed."""
    if value is None:
        return list(gpus)
    if not value.strip():
        return []
    out: list[PhysicalGpu] = []
    for raw in value.split(","):
        entry = raw.strip()
        where = f"{VISIBLE_ENV}={value!r}: entry {entry!r}"
        if entry.isdigit():
            i = int(entry)
            if i >= len(gpus):
                raise GpuMapError(f"{where} names no GPU: {_describe(gpus)}")
            gpu = gpus[i]
        elif entry.upper().startswith("MIG-"):
            raise _mig_error(where)
        elif entry.upper().startswith("GPU-") and len(entry) > 4:
            found = [g for g in gpus if g.uuid.upper().startswith(entry.upper())]
            if not found:
                raise GpuMapError(f"{where} matches no GPU's UUID ({', '.join(g.uuid for g in gpus) or 'none'})")
            if len(found) > 1:
                raise GpuMapError(f"{where} matches {len(found)} GPUs' UUIDs; give more of the UUID")
            gpu = found[0]
        else:
            raise GpuMapError(f"{where} is neither a GPU index nor a GPU UUID (GPU-...)")
        if gpu in out:
            raise GpuMapError(f"{where} names GPU {gpu.index} ({gpu.uuid}) a second time")
        out.append(gpu)
    return out


def _from_driver(cuda: Sequence[CudaDevice], gpus: Sequence[PhysicalGpu]) -> list[PhysicalGpu]:
    """The cards behind the CUDA driver's devices, in its order, by UUID or else PCI bus id."""
    out = []
    for d in cuda:
        if d.uuid.upper().startswith("MIG-"):
            raise _mig_error(f"CUDA device {d.ordinal} ({d.uuid})")
        match = [g for g in gpus if g.uuid.upper() == d.uuid.upper()]
        key = _pci_key(d.pci_bus_id)
        if not match and key is not None:
            match = [g for g in gpus if _pci_key(g.pci_bus_id) == key]
        if len(match) != 1:
            raise GpuMapError(f"CUDA device {d.ordinal} ({d.uuid}, PCI {d.pci_bus_id}) is not among the GPUs NVML "
                              f"lists ({_describe(gpus)}); cannot tell which counter measures it")
        out.append(match[0])
    return out


def resolve(
    ordinals: Sequence[int],
    gpus: Sequence[PhysicalGpu],
    *,
    visible: str | None = None,
    cuda: Sequence[CudaDevice] | None = None,
    where: str = "gpus",
) -> tuple[GpuBinding, ...]:
    """Bind the CUDA ordinals the user gave (``where`` says where: a flag or a config key)
    to the machine's cards. ``visible`` is the CUDA_VISIBLE_DEVICES value (None: unset);
    ``cuda`` the CUDA driver's device list when it could be read."""
    if not ordinals:
        raise GpuMapError(f"{where}: no GPU given; expected a non-empty list of CUDA ordinals (0, 1, ...)")
    seen = visible_devices(visible, gpus)
    if cuda is not None:
        seen = _from_driver(cuda, gpus)
    out: list[GpuBinding] = []
    for o in ordinals:
        if not isinstance(o, int) or isinstance(o, bool) or o < 0:
            raise GpuMapError(f"{where}: {o!r} is not a CUDA ordinal; expected an integer >= 0")
        if any(b.ordinal == o for b in out):
            raise GpuMapError(f"{where}: GPU {o} is listed twice")
        if o >= len(seen):
            env = f" ({VISIBLE_ENV}={visible!r})" if visible is not None else ""
            raise GpuMapError(f"{where}: GPU {o} does not exist: this process sees {len(seen)} GPU(s){env}"
                              + (f", CUDA ordinals 0..{len(seen) - 1}" if seen else ""))
        g = seen[o]
        if g.mig:
            raise _mig_error(f"{where}: GPU {o} (NVML {g.index}, {g.uuid})")
        out.append(GpuBinding(o, g.uuid, g.pci_bus_id, g.index, g.name))
    return tuple(out)


# The simulated machine's cards: --sim binds GPUs as on a real 8-GPU host.
SIM_MACHINE_GPUS = 8


def simulated_gpus(count: int, seed: int = 0) -> list[PhysicalGpu]:
    """A simulated machine of ``count`` cards; card i is the SimSpec of seed ``seed + i``
    (its UUID is the one ``SimSensor.info`` reports)."""
    return [PhysicalGpu(i, f"SIM-{(seed + i) & ((1 << 64) - 1):016x}", f"simulated:{i}", "Simulated H100")
            for i in range(count)]


def machine_gpus() -> list[PhysicalGpu]:
    """The machine's cards from NVML (raises NvmlUnavailable without NVML or a GPU)."""
    from wattscope.telemetry.nvml import list_devices

    return [PhysicalGpu(d["index"], d["uuid"], d["pci_bus_id"], d["name"], bool(d.get("mig")))
            for d in list_devices()]


def cuda_devices() -> list[CudaDevice] | None:
    """The devices the CUDA driver shows this process (it applies CUDA_VISIBLE_DEVICES
    and CUDA_DEVICE_ORDER itself), through libcuda's C API: no torch in this process
    and no CUDA context made. None when the library or the driver cannot be used."""
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if cu.cuInit(0) != 0:
        return None
    count = ctypes.c_int()
    if cu.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return None
    # The _v2 call gives a MIG instance's own UUID; the first one its parent card's.
    get_uuid = getattr(cu, "cuDeviceGetUuid_v2", None) or cu.cuDeviceGetUuid
    out = []
    for i in range(count.value):
        dev = ctypes.c_int()
        raw = (ctypes.c_ubyte * 16)()
        bus = ctypes.create_string_buffer(32)
        if cu.cuDeviceGet(ctypes.byref(dev), i) != 0 or get_uuid(raw, dev) != 0:
            return None
        if cu.cuDeviceGetPCIBusId(bus, len(bus), dev) != 0:
            return None
        h = bytes(raw).hex()
        # A MIG instance's UUID matches no card's: it is then found by its PCI bus id,
        # and its card's MIG mode refuses it.
        uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        out.append(CudaDevice(i, uuid, bus.value.decode()))
    return out


def resolve_machine(ordinals: Sequence[int], where: str = "gpus") -> tuple[GpuBinding, ...]:
    """``resolve`` on this machine: NVML's cards, this process's CUDA_VISIBLE_DEVICES and
    the CUDA driver's device list."""
    return resolve(ordinals, machine_gpus(), visible=os.environ.get(VISIBLE_ENV), cuda=cuda_devices(), where=where)


def other_processes(nvml_index: int, exclude_pid: int | None = None) -> list[tuple[int, int]]:
    """(pid, used bytes) of compute processes on NVML card ``nvml_index`` other than
    ``exclude_pid``; empty when NVML cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return [(p.pid, int(p.usedGpuMemory or 0)) for p in procs if p.pid != exclude_pid]
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def other_process_warning(binding: GpuBinding, others: Sequence[tuple[int, int]]) -> str | None:
    """The run's warning about other processes on a measured GPU, or None."""
    if not others:
        return None
    listed = ", ".join(f"pid {pid} ({used / 2**20:.0f} MiB)" for pid, used in others)
    return (f"other processes are using GPU {binding.ordinal} (NVML {binding.nvml_index}, {binding.uuid}): {listed}; "
            "figures may include their energy")
