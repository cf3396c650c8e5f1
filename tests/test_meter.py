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
