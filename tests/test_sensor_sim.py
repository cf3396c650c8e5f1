"""The simulated GPU: determinism, 100 ms refresh, counter = integral of power, state
shared across processes, shared-memory cleanup, and refresh-period measurement."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle

import pytest

from wattscope.events import now_ns
from wattscope.telemetry import (
    READ_SIGNALS,
    SensorSpec,
    SimGPU,
    SimSensor,
    SimSpec,
    measure_refresh_periods,
    open_sensor,
    refresh_period,
)
from wattscope.telemetry.sensor import Sensor

S = 1_000_000_000  # ns per second
MS = 1_000_000


def _segment_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


def _drive(gpu: SimGPU, timeline: list[tuple[float, float]], read_every_s: float, until_s: float) -> list[tuple]:
    """Apply (time_s, load_w) steps and read every read_every_s; returns (t, values, energy)."""
    out = []
    steps = sorted(timeline)
    t = 0.0
    i = 0
    while t <= until_s:
        while i < len(steps) and steps[i][0] <= t:
            gpu.set_load_w(steps[i][1], t_ns=gpu.t0_ns + round(steps[i][0] * S))
            i += 1
        t_ns = gpu.t0_ns + round(t * S)
        out.append((t, gpu.read(t_ns), gpu.energy_j(t_ns)))
        t = round(t + read_every_s, 9)
    return out


TIMELINE = [(0.5, 350.0), (2.05, 690.0), (3.3, 120.0), (4.0, 500.0)]


def test_same_seed_and_load_timeline_give_identical_readings() -> None:
    with SimGPU.create(SimSpec(seed=7)) as a, SimGPU.create(SimSpec(seed=7)) as b, SimGPU.create(SimSpec(seed=8)) as c:
        ra = _drive(a, TIMELINE, 0.01, 5.0)
        rb = _drive(b, TIMELINE, 0.01, 5.0)
        rc = _drive(c, TIMELINE, 0.01, 5.0)
    assert [(v, e) for _, v, e in ra] == [(v, e) for _, v, e in rb]
    # Another seed draws other noise: the power differs on most ticks.
    differ = sum(va[0] != vc[0] for (_, va, _), (_, vc, _) in zip(ra, rc))
    assert differ > 0.9 * len(ra)


def test_values_are_held_for_a_refresh_period_then_change() -> None:
    with SimGPU.create(SimSpec(seed=1, refresh_s=0.1, noise_w=2.0)) as gpu:
        t0 = gpu.t0_ns
        within = [gpu.read(t0 + 300 * MS + d * MS) for d in range(0, 100, 7)]  # all inside tick 3
        assert len(set(within)) == 1
        energy_within = {gpu.energy_j(t0 + 300 * MS + d * MS) for d in range(0, 100, 9)}
        assert len(energy_within) == 1
        # Each new tick draws new noise, so the power changes at (nearly) every boundary.
        ticks = [gpu.read(t0 + k * 100 * MS + 50 * MS)[0] for k in range(4, 40)]
        changes = sum(x != y for x, y in zip(ticks, ticks[1:]))
        assert changes >= 30
        assert all(abs(p - 72.0) < 12 for p in ticks)  # idle power plus noise of 2 W sd


def test_load_shows_from_the_next_tick_and_other_signals_respond() -> None:
    with SimGPU.create(SimSpec(seed=2, noise_w=0.0)) as gpu:
        t0 = gpu.t0_ns
        idle = gpu.read(t0 + 50 * MS)
        gpu.set_load_w(650.0, t_ns=t0 + 120 * MS)  # inside tick 1
        assert gpu.read(t0 + 150 * MS)[0] == idle[0]  # tick 1 started at idle
        busy = gpu.read(t0 + 210 * MS)  # tick 2
        assert busy[0] == 650.0
        later = gpu.read(t0 + 120 * S)
    power, avg, clock, util, temp, mem = (dict(zip(READ_SIGNALS, later))[s] for s in READ_SIGNALS)
    assert idle[0] == 72.0 and idle[2] == 345.0 and idle[3] == 0.0
    assert clock > 1500 and util == 100.0
    assert avg == pytest.approx(650.0, rel=0.01)  # the 1 s average has settled after 2 minutes
    assert temp > idle[4] + 20  # heated up
    assert busy[1] < 650.0  # but the average lags the instant power


def test_counter_equals_integral_of_sensor_power() -> None:
    with SimGPU.create(SimSpec(seed=3, noise_w=5.0)) as gpu:
        timeline = [(s * 0.37, 72.0 + (s * 97) % 600) for s in range(1, 160)]  # a new load every 370 ms
        rows = _drive(gpu, timeline, 0.01, 60.0)
    integrated = sum(v[0] * 0.01 for _, v, _ in rows[:-1])
    counted = rows[-1][2] - rows[0][2]
    assert counted > 60 * 72
    assert abs(counted - integrated) / counted < 0.001
    # The counter steps once per tick: it takes only ~10 distinct values per second.
    distinct = len({e for _, _, e in rows})
    assert 590 <= distinct <= 602


def _child_sets_and_reads(gpu: SimGPU, out: mp.Queue) -> None:
    out.put(gpu.read()[5])  # memory the parent set before the child started
    gpu.set_load_w(444.0)
    out.put("set")
    gpu.close()


@pytest.mark.process
def test_state_is_shared_with_a_spawned_process() -> None:
    ctx = mp.get_context("spawn")
    with SimGPU.create(SimSpec(seed=4, noise_w=0.0)) as gpu:
        gpu.set_mem_used_mib(1234.0)
        q = ctx.Queue()
        p = ctx.Process(target=_child_sets_and_reads, args=(gpu, q))
        p.start()
        assert q.get(timeout=20) == 1234.0
        assert q.get(timeout=20) == "set"
        p.join(10)
        assert p.exitcode == 0
        assert gpu.load_w == 444.0
        # The sensor shows it from the next tick on.
        next_tick_ns = gpu.t0_ns + (gpu.tick_at(now_ns()) + 2) * round(gpu.spec.refresh_s * S)
        assert gpu.read(next_tick_ns)[0] == 444.0
        assert _segment_exists(gpu.name)  # the child's close did not remove it


def test_handle_pickles_and_attaches_without_owning() -> None:
    gpu = SimGPU.create(SimSpec())
    name = gpu.name
    other = pickle.loads(pickle.dumps(gpu))
    other.set_load_w(300.0)
    assert gpu.load_w == 300.0
    other.close()
    assert _segment_exists(name)
    gpu.close()
    assert not _segment_exists(name)
    with pytest.raises(ValueError, match="closed"):
        gpu.read()


def test_creator_close_removes_the_segment_even_with_sensors_attached() -> None:
    gpu = SimGPU.create(SimSpec())
    sensor = open_sensor(SensorSpec.simulated(gpu))
    name = gpu.name
    assert _segment_exists(name)
    sensor.close()
    gpu.close()
    gpu.close()  # idempotent
    assert not _segment_exists(name)


def test_private_sim_sensor_cleans_up() -> None:
    sensor = open_sensor(("sim", SimSpec(energy_read_s=0.0)))
    assert isinstance(sensor, Sensor)
    name = sensor.gpu.name
    assert _segment_exists(name)
    sensor.close()
    assert not _segment_exists(name)


def test_sim_sensor_contract() -> None:
    with SimGPU.create(SimSpec(tdp_w=700.0, energy_read_s=0.0)) as gpu:
        s = SimSensor(gpu, index=3)
        info = s.info()
        assert info["index"] == 3 and info["tdp_w"] == 700.0 and info["simulated"] is True
        assert set(info["signal_sources"]) == set(s.signals())
        assert all(reason is None for reason in s.signals().values())
        row = s.read()
        assert len(row) == len(READ_SIGNALS) and not any(math.isnan(v) for v in row)
        assert s.energy_j() >= 0.0
        s.close()


@pytest.mark.parametrize(
    "kwargs",
    [{"refresh_s": 0}, {"tdp_w": 50.0, "idle_w": 72.0}, {"noise_w": -1.0}, {"energy_read_s": -0.1}],
)
def test_bad_sim_spec_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="SimSpec"):
        SimSpec(**kwargs)


@pytest.mark.parametrize("w", [-1.0, float("nan"), float("inf"), "300"])
def test_bad_load_is_refused(w: object) -> None:
    with SimGPU.create(SimSpec()) as gpu:
        with pytest.raises(ValueError, match="set_load_w"):
            gpu.set_load_w(w)  # type: ignore[arg-type]


def test_refresh_measurement_on_the_sim() -> None:
    with SimGPU.create(SimSpec(refresh_s=0.1, energy_read_s=0.003)) as gpu:
        sensor = SimSensor(gpu)
        periods = measure_refresh_periods(sensor, duration_s=0.75)
        sensor.close()
    assert periods["power_w"] == pytest.approx(0.1, rel=0.05)
    assert periods["power_avg_w"] == pytest.approx(0.1, rel=0.05)
    assert periods["energy_j"] == pytest.approx(0.1, rel=0.1)
    assert periods["sm_clock_mhz"] is None  # idle clock never changes: too few changes to tell
    assert set(periods) == {"power_w", "power_avg_w", "energy_j", "sm_clock_mhz", "util_pct", "temp_c", "mem_used_mib"}


def test_refresh_measurement_follows_a_slower_sim() -> None:
    with SimGPU.create(SimSpec(refresh_s=0.05, energy_read_s=0.0)) as gpu:
        sensor = SimSensor(gpu)
        periods = measure_refresh_periods(sensor, duration_s=0.4)
        sensor.close()
    assert periods["power_w"] == pytest.approx(0.05, rel=0.1)


def test_refresh_period_estimator() -> None:
    ms = MS
    # Every 100 ms, with one spurious change 3 ms after another (seen on an H100).
    times = [0, 100, 200, 300, 303, 400, 500, 700, 800]
    assert refresh_period([t * ms for t in times]) == pytest.approx(0.1, abs=0.002)
    # Changes at multiples of the period only (equal consecutive readings skipped).
    assert refresh_period([t * ms for t in (0, 200, 300, 600, 700, 900)]) == pytest.approx(0.1)
    # Too few changes, or no two gaps alike: cannot tell.
    assert refresh_period([0, 100 * ms]) is None
    assert refresh_period([0, 100 * ms, 300 * ms]) is None
    assert refresh_period([]) is None
