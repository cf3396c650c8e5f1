"""What `wattscope devices` shows: each GPU, which signals work (and where they come
from), how often each really refreshes (measured), what a read costs, its power limits."""

from __future__ import annotations

import json
import math
from typing import Any

from wattscope.telemetry.nvml import NvmlUnavailable, list_devices
from wattscope.telemetry.open import SensorSpec, open_sensor
from wattscope.telemetry.probe import measure_refresh_periods, time_reads
from wattscope.telemetry.sensor import SIGNALS, Sensor
from wattscope.telemetry.sim import SimSpec


def describe_sensor(sensor: Sensor, measure_s: float = 1.0) -> dict[str, Any]:
    """The sensor's info plus, per signal: supported, absent reason, source, refresh_s."""
    info = sensor.info()
    absent = sensor.signals()
    periods = measure_refresh_periods(sensor, measure_s) if measure_s > 0 else {}
    sources = info.get("signal_sources", {})
    info["signals"] = {
        sig: {
            "supported": absent.get(sig) is None,
            "reason": absent.get(sig),
            "source": sources.get(sig),
            "refresh_s": periods.get(sig),
        }
        for sig in SIGNALS
    }
    info["read_costs"] = time_reads(sensor, n_read=200, n_energy=10)
    return info


def describe_devices(measure_s: float = 1.0, sim: SimSpec | bool | None = None) -> list[dict[str, Any]]:
    """Describe every NVIDIA GPU, or one simulated GPU when ``sim`` is a SimSpec or True.
    Without NVML or a GPU the list holds one entry, ``{"error": message for the user}``."""
    if sim is True:
        sim = SimSpec()
    try:
        specs = [SensorSpec.simulated(sim)] if sim else [SensorSpec.nvml(d["index"]) for d in list_devices()]
    except NvmlUnavailable as e:
        return [{"error": f"{e}\nNo GPU to describe. `wattscope devices --sim` describes the simulated GPU."}]
    out = []
    for spec in specs:
        sensor = open_sensor(spec)
        try:
            out.append(describe_sensor(sensor, measure_s))
        finally:
            sensor.close()
    return out


def _w(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f} W"


def format_devices(devs: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for d in devs:
        if "error" in d:
            lines.append(d["error"])
            continue
        lines.append(f"GPU {d['index']}  {d['name']}" + ("  (simulated)" if d.get("simulated") else ""))
        lines.append(f"  uuid {d.get('uuid')}   PCI {d.get('pci_bus_id')}")
        facts = [f"driver {d.get('driver_version')}"]
        if d.get("nvml_version"):
            facts.append(f"NVML {d['nvml_version']}")
        if d.get("cuda_driver_version"):
            facts.append(f"CUDA {d['cuda_driver_version']}")
        if d.get("compute_capability"):
            facts.append(f"compute capability {d['compute_capability']}")
        if d.get("memory_total_mib") is not None:
            facts.append(f"{d['memory_total_mib']:.0f} MiB")
        lines.append("  " + ", ".join(facts))
        lines.append(
            f"  power limits: TDP (default) {_w(d.get('tdp_w'))}, enforced {_w(d.get('enforced_limit_w'))}, "
            f"min {_w(d.get('min_limit_w'))}, max {_w(d.get('max_limit_w'))}"
        )
        lines.append(f"  {'signal':<14}{'refresh':>10}  source")
        for sig, s in d["signals"].items():
            if not s["supported"]:
                lines.append(f"  {sig:<14}{'absent':>10}  {s['reason']}")
                continue
            r = s["refresh_s"]
            refresh = "steady" if r is None else f"{r * 1000:.0f} ms"
            lines.append(f"  {sig:<14}{refresh:>10}  {s['source']}")
        c = d.get("read_costs", {})
        cost = f"  read cost: sensor read {c.get('read_us_median', float('nan')):.1f} us median"
        if "energy_ms_median" in c:
            cost += f"; energy counter {c['energy_ms_median']:.2f} ms median, {c['energy_ms_p99']:.2f} ms p99"
        lines.append(cost)
        lines.append("")
    if any("error" not in d for d in devs):
        lines.append("refresh: shortest stable interval between value changes while polling; 'steady' = too few changes to tell")
    return "\n".join(lines)


def _json_safe(o: Any) -> Any:
    """NaN and infinities (a read cost not measured) as null: strict JSON."""
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def devices_json(devs: list[dict[str, Any]]) -> str:
    """The same description as ``format_devices``, as a JSON list: each GPU's info, its
    ``signals`` (supported, reason, source, refresh_s) and ``read_costs``; without a GPU
    one ``{"error": ...}`` object."""
    return json.dumps(_json_safe(devs), indent=2, allow_nan=False)


def devices_command(
    measure_s: float = 1.0, sim: SimSpec | bool | None = None, as_json: bool = False
) -> tuple[int, str]:
    """(exit code, text) for `wattscope devices [--sim] [--json]`: 1 and a plain message
    (or the error object) when there is no NVML or no GPU."""
    devs = describe_devices(measure_s, sim)
    text = devices_json(devs) if as_json else format_devices(devs)
    return (1 if any("error" in d for d in devs) else 0), text
