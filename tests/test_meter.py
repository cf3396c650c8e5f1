"""The Zeus-style API users call from their own code, against the simulated GPU."""

from __future__ import annotations

import time

import pytest

import wattscope
from wattscope.meter import Meter
from wattscope.telemetry import SimSpec
from wattscope.telemetry.sim import SimSensor


@pytest.fixture()
def sensor():
    s = SimSensor(SimSpec(seed=1, refresh_s=0.01, noise_w=0.0))
    s.gpu.set_load_w(400.0)
    time.sleep(0.05)  # let the load reach the sensor's next tick
    yield s
    s.close()


def test_measure_gives_counter_energy_duration_and_power(sensor) -> None:
    synced = []
    with pytest.warns(UserWarning, match="repeat the work"):
        with wattscope.measure("step", sync=lambda: synced.append(1), sensor=sensor) as m:
            time.sleep(0.5)
    assert synced == [1, 1]  # queued GPU work is inside the window: sync at both edges
    assert m.duration_s == pytest.approx(0.5, abs=0.05)
    # 400 W held, counter stepping every 10 ms: within two steps of the truth.
    assert m.energy_j == pytest.approx(400.0 * m.duration_s, abs=2 * 400.0 * 0.01 + 1.0)
    assert m.power_w == pytest.approx(400.0, rel=0.1)
    assert m.coarse


def test_begin_end_and_misuse(sensor) -> None:
    meter = Meter(sensor=sensor)
    meter.begin("a")
    with pytest.raises(ValueError, match="already open"):
        meter.begin("a")
    time.sleep(0.05)  # several counter steps
    with pytest.warns(UserWarning):
        m = meter.end("a")
    assert m.name == "a" and m.energy_j > 0
    with pytest.raises(ValueError, match="never begun"):
        meter.end("a")


def test_an_unfinished_measurement_has_no_numbers() -> None:
    m = wattscope.meter.Measurement("x")
    assert m.energy_j != m.energy_j and m.duration_s != m.duration_s  # NaN, not 0


def _held(load_w: float, seed: int, refresh_s: float = 0.1) -> SimSensor:
    """A simulated GPU holding ``load_w``, its counter stepping every ``refresh_s``, read
    without the H100's read delay so edge times are exact."""
    s = SimSensor(SimSpec(seed=seed, refresh_s=refresh_s, noise_w=0.0, energy_read_s=0.0))
    s.gpu.set_load_w(load_w)
    time.sleep(2 * refresh_s)  # let the load reach the sensor's next tick
    return s


def _whole_refreshes(m, load_w: float, refresh_s: float) -> bool:
    """The window's energy is that of whole refresh periods, and its length that many
    periods give or take a scheduling delay (this host is shared): edges on updates."""
    k = round(m.duration_s / refresh_s)
    return m.energy_j == pytest.approx(load_w * refresh_s * k) and abs(m.duration_s - k * refresh_s) < 0.3 * refresh_s


def test_both_edges_sit_on_counter_updates() -> None:
    sensor = _held(400.0, seed=2)
    try:
        with pytest.warns(UserWarning):
            with wattscope.measure("w", sensor=sensor) as m:
                time.sleep(0.35)  # half a refresh past a whole number of them
        # A single read at each edge would give 0.35 s and 120 or 160 J (343 or 457 W):
        # on the updates, the window is whole refreshes and its power the true 400 W.
        assert _whole_refreshes(m, 400.0, 0.1) and m.duration_s >= 0.35
        assert m.power_w == pytest.approx(400.0, rel=0.07)
    finally:
        sensor.close()


def test_windows_nest_and_each_reads_its_own_edges() -> None:
    sensor = _held(300.0, seed=3)
    meter = Meter(sensor=sensor)
    try:
        with pytest.warns(UserWarning):
            with meter.window("outer") as outer:
                time.sleep(0.1)
                with meter.window("inner") as inner:
                    time.sleep(0.2)
                time.sleep(0.1)
        assert outer.start_ns < inner.start_ns < inner.end_ns < outer.end_ns
        assert outer.energy_j > inner.energy_j > 0
        for m in (outer, inner):
            assert _whole_refreshes(m, 300.0, 0.1)
    finally:
        sensor.close()


def test_measure_as_a_decorator_keeps_every_call_also_recursive_ones() -> None:
    sensor = _held(200.0, seed=4)
    try:
        step = wattscope.measure("step", sensor=sensor)

        @step
        def work(depth: int) -> int:
            time.sleep(0.1)
            return work(depth - 1) + 1 if depth else 0

        with pytest.warns(UserWarning):
            assert work(1) == 1
            assert work(0) == 0
        # The inner (recursive) call ends first; each call is its own window.
        assert [m.name for m in step.measurements] == ["step"] * 3
        inner, outer, alone = step.measurements
        assert outer.start_ns < inner.start_ns and inner.end_ns <= outer.end_ns and step.last is alone
        assert outer.energy_j > inner.energy_j and all(_whole_refreshes(m, 200.0, 0.1) for m in step.measurements)
    finally:
        sensor.close()


def test_several_gpus_sum_and_keep_each_part() -> None:
    from wattscope.telemetry.group import SensorGroup

    group = SensorGroup([_held(400.0, seed=5), _held(100.0, seed=6, refresh_s=0.07)])
    try:
        with pytest.warns(UserWarning):
            with wattscope.measure("split", sensor=group) as m:
                time.sleep(0.5)
        a, b = m.energy_parts_j
        assert a + b == pytest.approx(m.energy_j, rel=1e-12)
        # Each card's edges sit on its own updates: each part is whole ticks of that card
        # (40 J and 7 J), and within one tick of its power over the window.
        for part, load, tick in ((a, 400.0, 40.0), (b, 100.0, 7.0)):
            assert part == pytest.approx(tick * round(part / tick))
            assert abs(part - load * m.duration_s) <= tick * 1.3
    finally:
        group.close()


def test_the_meter_binds_gpus_like_a_run(monkeypatch) -> None:
    from wattscope.telemetry import gpu_map

    monkeypatch.setattr(gpu_map, "machine_gpus", lambda: [gpu_map.PhysicalGpu(0, "GPU-aa", "00000000:01:00.0")])
    monkeypatch.setattr(gpu_map, "cuda_devices", lambda: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(gpu_map.GpuMapError, match=r"wattscope.measure gpus: GPU 1 does not exist"):
        Meter(gpus=[0, 1])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1234")
    with pytest.raises(gpu_map.GpuMapError, match="MIG instance"):
        with wattscope.measure("x"):
            pass
