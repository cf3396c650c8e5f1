"""Host isolation: which CPU core each measured process runs on.

Why: at small batch the GPU waits on the Python thread that launches its kernels, so the
scheduler moving that thread between cores, or another process sharing its core, shows
up as time and energy per call. On a lent H100 host, pinning the process that runs the
model to one core cut the window-to-window CV of FP16 batch-8 decode energy from 12% to
1.8% (shared/notes/repeatability-probe.md). So the runner gets a core of its own, the
sampler another, and the parent (recorder, display) keeps the rest.
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
        d["gc"] = "collected before each window, disabled inside it"
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
    # "auto" takes the highest cores: core 0 usually serves most device interrupts.
    runner = ordered[-1] if host.runner_cpu == "auto" and auto else _explicit("runner_cpu", host.runner_cpu, cpus, source)
    sampler = ordered[-2] if host.sampler_cpu == "auto" and auto else _explicit("sampler_cpu", host.sampler_cpu, cpus, source)
    if runner is not None and runner == sampler:
        raise HostError(f"{source}: 'host.runner_cpu' and 'host.sampler_cpu' are both CPU {runner}; expected two different cores")
    dedicated = {c for c in (runner, sampler) if c is not None}
    parent = tuple(c for c in ordered if c not in dedicated) or None
    if not dedicated:
        parent = None
    if "auto" in (host.runner_cpu, host.sampler_cpu) and not auto:
        note = f"only {len(ordered)} usable cores (auto isolation needs {AUTO_MIN_CPUS}): processes not pinned"
    elif dedicated:
        note = "runner and sampler pinned to their own cores; the parent keeps the rest"
    else:
        note = "not pinned (host.runner_cpu and host.sampler_cpu are off)"
    return HostPlan(runner, sampler, parent, ordered, note)


def pin(pid: int, cpu: int | None) -> None:
    """Confine a process (0 = this one) to one core; None leaves it free."""
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


def pin_set(pid: int, cpus: tuple[int, ...]) -> None:
    """Confine a process to a set of cores."""
    os.sched_setaffinity(pid, set(cpus))
