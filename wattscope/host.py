"""Host isolation: which CPU core each measured process runs on.

Why: at small batch the GPU waits on the Python thread that launches its kernels, so the
scheduler moving that thread between cores, or another process sharing its core, shows
up as time and energy per call. On a lent H200, pinning the process that runs the model
cut the window-to-window CV of FP16 batch-8 decode energy from 12% to 1.8%; on a lent H100
pinning plus the garbage collector kept out of windows cut it from 24% to 12%, while
batch-1 decode stayed at 18% (benchmarks/results/h100-host-isolation-2026-11-27.json).
So the runner gets a core of its own, the sampler another, and the parent (recorder,
display) keeps the rest.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from wattscope.config import ConfigError, Host

# Below this many usable cores, "auto" leaves every process free: dedicating two of
# three would starve the parent that records and draws.
AUTO_MIN_CPUS = 4


class HostError(ConfigError):
    """A [host] choice that this machine cannot honour."""


@dataclass(frozen=True)
class HostPlan:
    runner_cpu: int | None
    sampler_cpu: int | None
    parent_cpus: tuple[int, ...] | None  # None: the parent is left where it is
    cpus_available: tuple[int, ...]
    note: str

    def to_meta(self) -> dict[str, Any]:
        d = asdict(self)
        d["gc"] = "disabled inside each window"
        d["torch_threads"] = 1 if self.runner_cpu is not None else "torch default"
        return d


def available_cpus() -> set[int]:
    return set(os.sched_getaffinity(0))


def _explicit(key: str, value: int | str, cpus: set[int], source: str) -> int | None:
    if value == "off":
        return None
    if isinstance(value, int) and value not in cpus:
        listed = ", ".join(str(c) for c in sorted(cpus))
        raise HostError(f"{source}: 'host.{key}' = {value} is not a CPU this process may run on; allowed: {listed}, \"auto\" or \"off\"")
    return value if isinstance(value, int) else None


def plan(host: Host, cpus: set[int], source: str = "config") -> HostPlan:
    """Resolve the [host] table against the CPUs this process may use."""
    ordered = tuple(sorted(cpus))
    auto = len(ordered) >= AUTO_MIN_CPUS
    # Explicit choices first; "auto" then takes the highest core left (core 0 usually
    # serves most device interrupts).
    chosen = {
        key: _explicit(key, value, cpus, source)
        for key, value in (("runner_cpu", host.runner_cpu), ("sampler_cpu", host.sampler_cpu)) if value != "auto"
    }
    if chosen.get("runner_cpu") is not None and chosen.get("runner_cpu") == chosen.get("sampler_cpu"):
        raise HostError(f"{source}: 'host.runner_cpu' and 'host.sampler_cpu' are both CPU {chosen['runner_cpu']}; "
                        "expected two different cores")
    for key in ("runner_cpu", "sampler_cpu"):
        if key not in chosen:
            free = [c for c in ordered if c not in chosen.values()]
            chosen[key] = free[-1] if auto and free else None
    runner, sampler = chosen["runner_cpu"], chosen["sampler_cpu"]
    dedicated = {c for c in (runner, sampler) if c is not None}
    parent = tuple(c for c in ordered if c not in dedicated) or None if dedicated else None
    pinned = [name for name, c in (("runner", runner), ("sampler", sampler)) if c is not None]
    note = (" and ".join(pinned) + " pinned to cores of their own; the parent keeps the rest") if pinned else "not pinned"
    if "auto" in (host.runner_cpu, host.sampler_cpu) and not auto:
        note += f" (only {len(ordered)} usable cores: auto isolation needs {AUTO_MIN_CPUS})"
    elif not pinned:
        note += " (host.runner_cpu and host.sampler_cpu are off)"
    return HostPlan(runner, sampler, parent, ordered, note)


def pin(pid: int, cpu: int | None) -> None:
    """Confine a process (0 = this one) to one core; None leaves it free."""
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


def pin_set(pid: int, cpus: tuple[int, ...]) -> None:
    """Confine a process to a set of cores."""
    os.sched_setaffinity(pid, set(cpus))
