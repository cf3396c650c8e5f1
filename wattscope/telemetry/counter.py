"""Reading the energy counter at a window's edge, for the protocol and ``wattscope.measure``.

The counter refreshes only every ~100 ms on an H100: read at an arbitrary moment, it lags
the truth by up to one refresh, which over a 2 s window is up to +-5% of its energy.
Taking both edges on an update makes the window span whole refresh periods exactly.
Several GPUs refresh on clocks of their own, so an edge over several waits for each
card's next update and keeps that card's value from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from wattscope.events import now_ns

# Longer than any counter refresh period seen (H100: ~100 ms), short enough not to stall.
EDGE_TIMEOUT_NS = 500_000_000


class EnergySensor(Protocol):
    def energy_j(self) -> float: ...


@dataclass(frozen=True)
class Edge:
    """A window edge: when, the counter total, and each GPU's counter (one entry for one GPU)."""

    t_ns: int
    energy_j: float
    parts_j: tuple[float, ...]


def _read(sensor: EnergySensor) -> tuple[int, tuple[float, ...]]:
    """Counter values and the time they stand for: the middle of the (slow) read."""
    t_a = now_ns()
    parts = getattr(sensor, "energy_parts_j", None)
    values = tuple(parts()) if parts is not None else (sensor.energy_j(),)
    t_b = now_ns()
    return (t_a + t_b) // 2, values


def counter_edge(sensor: EnergySensor) -> Edge:
    """Wait for every GPU's counter to update and return the values at those updates.

    A sensor of several GPUs offers ``energy_parts_j()`` (one counter each; ``energy_j``
    is their sum). Each GPU's value is the first one read after its update; the edge's
    time is that of the read that saw the last GPU update. A counter that does not move
    within EDGE_TIMEOUT_NS (stalled or very slow) keeps its latest value. A sensor whose
    counter is exact at every read says so with ``counter_steps = False`` and is read once."""
    t, first = _read(sensor)
    if not getattr(sensor, "counter_steps", True):
        return Edge(t, math.fsum(first), first)
    kept: list[float | None] = [None] * len(first)
    deadline = now_ns() + EDGE_TIMEOUT_NS
    while True:
        t, values = _read(sensor)
        for i, (v, v0) in enumerate(zip(values, first)):
            if kept[i] is None and (v != v0 or math.isnan(v)):
                kept[i] = v
        if all(k is not None for k in kept) or t >= deadline:
            parts = tuple(v if k is None else k for k, v in zip(kept, values))
            return Edge(t, math.fsum(parts), parts)


def parts_between(start: Edge, end: Edge) -> tuple[float, ...]:
    """Each GPU's energy between two edges; empty for one GPU (its part is the total)."""
    if len(start.parts_j) < 2:
        return ()
    return tuple(b - a for a, b in zip(start.parts_j, end.parts_j))
