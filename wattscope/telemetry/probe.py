"""Measurements of a sensor itself: how often each signal really refreshes, and what a
read costs. The session records both in the run metadata."""

from __future__ import annotations

import math
import statistics
import threading
import time
from typing import Any

from wattscope.events import now_ns
from wattscope.telemetry.sensor import READ_SIGNALS, Sensor

# Two change gaps within this ratio of each other count as the same interval.
_SAME_GAP = 1.25


def refresh_period(change_times_ns: list[int]) -> float | None:
    """The refresh period, in seconds, behind a list of times at which a value changed.

    A value changes at most once per refresh, and not at every refresh when two
    consecutive readings happen to be equal (a steady clock, a quantised idle power), so
    the gaps between changes are mostly multiples of the period, plus the odd short gap
    when the reading source moved during one poll (seen on an H100: 3 ms between two
    changes of the instant power). The period is taken as the shortest *stable* gap: the
    smallest gap that at least one other gap matches within 25%, reported as the median
    of the gaps in that cluster. The first reading is not a change, so the time from the
    start to the first change is never a gap. None when no gap is matched (fewer than
    three changes, or all gaps different): the window was too short to tell.
    """
    gaps = sorted(b - a for a, b in zip(change_times_ns, change_times_ns[1:]) if b > a)
    for i, g in enumerate(gaps):
        cluster = [x for x in gaps[i:] if x <= g * _SAME_GAP]
        if len(cluster) >= 2:
            return statistics.median(cluster) / 1e9
    return None


def measure_refresh_periods(sensor: Sensor, duration_s: float = 1.0, poll_s: float = 0.0002) -> dict[str, float | None]:
    """Poll the sensor for ``duration_s`` and return signal -> refresh period in seconds
    (None for an absent signal, or one that did not change often enough to tell).

    ``read()`` is polled every ``poll_s`` on this thread while another thread polls the
    slow energy counter back to back (its NVML call releases the GIL), so the two don't
    slow each other down and both get the whole window.
    """
    absent = sensor.signals()
    changes: dict[str, list[int]] = {s: [] for s in READ_SIGNALS}
    energy_changes: list[int] = []
    stop = threading.Event()

    def poll_energy() -> None:
        last = math.nan
        while not stop.is_set():
            v = sensor.energy_j()
            t = now_ns()
            if v == v and v != last:
                if last == last:  # the first reading is not a change
                    energy_changes.append(t)
                last = v
            time.sleep(poll_s)  # lets the read() poller have the GIL when energy_j is pure Python
    energy_thread = None
    if absent.get("energy_j") is None:
        energy_thread = threading.Thread(target=poll_energy, name="refresh-energy", daemon=True)
        energy_thread.start()
    last: list[float] = [math.nan] * len(READ_SIGNALS)
    end = now_ns() + int(duration_s * 1e9)
    try:
        while (t := now_ns()) < end:
            for i, v in enumerate(sensor.read()):
                if v == v and v != last[i]:
                    if last[i] == last[i]:
                        changes[READ_SIGNALS[i]].append(t)
                    last[i] = v
            time.sleep(poll_s)
    finally:
        stop.set()
        if energy_thread is not None:
            energy_thread.join()
    out: dict[str, float | None] = {}
    for sig in absent:
        if absent[sig] is not None:
            out[sig] = None
        elif sig == "energy_j":
            out[sig] = refresh_period(energy_changes)
        else:
            out[sig] = refresh_period(changes[sig])
    return out


def time_reads(sensor: Sensor, n_read: int = 500, n_energy: int = 30) -> dict[str, Any]:
    """Median and p99 cost of ``read()`` (us) and ``energy_j()`` (ms)."""

    def timed(fn: Any, n: int) -> list[float]:
        fn()
        out = []
        for _ in range(n):
            t = time.perf_counter_ns()
            fn()
            out.append(time.perf_counter_ns() - t)
        return sorted(out)

    r = timed(sensor.read, n_read)
    res: dict[str, Any] = {
        "read_us_median": r[len(r) // 2] / 1e3,
        "read_us_p99": r[min(len(r) - 1, int(len(r) * 0.99))] / 1e3,
    }
    if sensor.signals().get("energy_j") is None:
        e = timed(sensor.energy_j, n_energy)
        res["energy_ms_median"] = e[len(e) // 2] / 1e6
        res["energy_ms_p99"] = e[min(len(e) - 1, int(len(e) * 0.99))] / 1e6
    return res
