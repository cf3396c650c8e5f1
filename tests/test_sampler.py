"""The sampler process against the simulated GPU: rate, clock, rows, fresh flags, energy
rate, batching, stats, parent death and sampler death."""

from __future__ import annotations

import math
import os
import queue as queue_mod
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wattscope.events import (
    FRESH_ENERGY,
    FRESH_POWER,
    SAMPLE_COLUMNS,
    RunWarning,
    Samples,
    SamplerStats,
    now_ns,
)
from wattscope.telemetry import SamplerProcess, SensorSpec, SimGPU, SimSpec

ROOT = Path(__file__).resolve().parent.parent
COL = {c: i for i, c in enumerate(SAMPLE_COLUMNS)}


def _drain(sp: SamplerProcess, seconds: float, events: list) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            events.append(sp.queue.get(timeout=0.05))
        except queue_mod.Empty:
            pass


def _wait_first_batch(sp: SamplerProcess, events: list) -> None:
    """Process start-up (a fresh interpreter) takes a while on a loaded machine."""
    deadline = time.monotonic() + 30
    while not any(isinstance(e, Samples) for e in events):
        assert time.monotonic() < deadline, "the sampler sent nothing in 30 s"
        try:
            events.append(sp.queue.get(timeout=0.05))
        except queue_mod.Empty:
            pass


def _drain_rest(sp: SamplerProcess, events: list) -> None:
    while True:
        try:
            events.append(sp.queue.get(timeout=0.5))
        except queue_mod.Empty:
            return


def _pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited; only its reaping is left to whoever adopted it


@pytest.fixture(scope="module")
def run_100hz() -> dict:
    """One run of ~1.7 s at 100 Hz, energy at 10 Hz, shared by the tests below. Halfway
    the 'runner' (this process) raises the simulated load to 500 W."""
    gpu = SimGPU.create(SimSpec(seed=5, noise_w=1.5))
    sp = SamplerProcess([SensorSpec.simulated(gpu, index=2)], rate_hz=100, energy_hz=10)
    events: list = []
    t_before = now_ns()
    sp.start()
    _wait_first_batch(sp, events)
    _drain(sp, 0.8, events)
    t_load = now_ns()
    gpu.set_load_w(500.0)
    _drain(sp, 0.8, events)
    sp.stop()
    t_after = now_ns()
    _drain_rest(sp, events)
    gpu.close()
    rows = [r for e in events if isinstance(e, Samples) for r in e.rows]
    return {
        "events": events,
        "rows": rows,
        "stats": [e for e in events if isinstance(e, SamplerStats)],
        "t_before": t_before,
        "t_after": t_after,
        "t_load": t_load,
        "exitcode": sp.exitcode,
        "failure": sp.failure(),
    }


@pytest.mark.process
def test_rows_come_at_the_target_rate(run_100hz: dict) -> None:
    rows = run_100hz["rows"]
    assert len(rows) > 100
    span_s = (rows[-1][0] - rows[0][0]) / 1e9
    rate = (len(rows) - 1) / span_s
    assert rate == pytest.approx(100.0, rel=0.03)


@pytest.mark.process
def test_rows_are_on_the_monotonic_clock_and_well_formed(run_100hz: dict) -> None:
    rows = run_100hz["rows"]
    ts = [r[0] for r in rows]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    assert run_100hz["t_before"] < ts[0] and ts[-1] < run_100hz["t_after"]
    assert all(len(r) == len(SAMPLE_COLUMNS) for r in rows)
    assert {r[COL["gpu"]] for r in rows} == {2}
    assert all(isinstance(r[COL["fresh"]], int) for r in rows)
    # Rows read after the load change (allowing one refresh tick) show it.
    late = [r[COL["power_w"]] for r in rows if r[0] > run_100hz["t_load"] + 250_000_000]
    early = [r[COL["power_w"]] for r in rows if r[0] < run_100hz["t_load"]]
    assert late and early
    assert all(abs(p - 500) < 15 for p in late) and all(abs(p - 72) < 15 for p in early)


@pytest.mark.process
def test_fresh_flags_count_the_100ms_refreshes(run_100hz: dict) -> None:
    rows = run_100hz["rows"]
    span_s = (rows[-1][0] - rows[0][0]) / 1e9
    fresh_power = sum(1 for r in rows if r[COL["fresh"]] & FRESH_POWER)
    assert 8.0 <= fresh_power / span_s <= 12.0
    # A row flagged fresh differs from the previous row; an unflagged one does not.
    for a, b in zip(rows, rows[1:]):
        assert bool(b[COL["fresh"]] & FRESH_POWER) == (b[COL["power_w"]] != a[COL["power_w"]])


@pytest.mark.process
def test_energy_is_read_at_energy_hz(run_100hz: dict) -> None:
    rows = run_100hz["rows"]
    span_s = (rows[-1][0] - rows[0][0]) / 1e9
    energy = [(r[0], r[COL["energy_j"]], r[COL["fresh"]]) for r in rows if not math.isnan(r[COL["energy_j"]])]
    assert 7.0 <= len(energy) / span_s <= 13.0
    values = [e for _, e, _ in energy]
    assert all(b >= a for a, b in zip(values, values[1:]))  # a counter never goes back
    assert sum(1 for *_, f in energy if f & FRESH_ENERGY) >= len(energy) - 2
    assert all(not (r[COL["fresh"]] & FRESH_ENERGY) for r in rows if math.isnan(r[COL["energy_j"]]))


@pytest.mark.process
def test_rows_are_batched_about_every_100ms(run_100hz: dict) -> None:
    batches = [e for e in run_100hz["events"] if isinstance(e, Samples)]
    assert 14 <= len(batches) <= 20
    assert max(len(b.rows) for b in batches[:-1]) <= 12


@pytest.mark.process
def test_stats_report_rate_and_fresh_values(run_100hz: dict) -> None:
    stats = run_100hz["stats"]
    assert stats, "no SamplerStats within 1.7 s"
    s = stats[0]
    assert s.target_hz == 100.0
    assert s.achieved_hz == pytest.approx(100.0, rel=0.03)
    assert s.drops <= 2
    assert 0.0 <= s.jitter_p99_ms < 50.0
    assert 8.0 <= s.distinct_per_s["power_w"] <= 12.0
    assert 7.0 <= s.distinct_per_s["energy_j"] <= 13.0
    assert 0.0 < s.cpu_pct < 50.0


@pytest.mark.process
def test_a_clean_stop_is_not_a_failure(run_100hz: dict) -> None:
    assert run_100hz["exitcode"] == 0
    assert run_100hz["failure"] is None
    assert not [e for e in run_100hz["events"] if isinstance(e, RunWarning) and "slipping" not in e.message]


@pytest.mark.process
def test_stop_flushes_the_last_batch() -> None:
    with SimGPU.create(SimSpec()) as gpu:
        sp = SamplerProcess([SensorSpec.simulated(gpu)], rate_hz=100, batch_interval_s=10.0, stats_interval_s=10.0)
        sp.start()
        events: list = []
        _drain(sp, 1.5, events)
        assert not any(isinstance(e, Samples) for e in events)
        t_stop = now_ns()
        sp.stop()
        _drain_rest(sp, events)
    rows = [r for e in events if isinstance(e, Samples) for r in e.rows]
    assert len(rows) >= 10
    assert rows[-1][0] > t_stop - 50_000_000  # sampled up to the stop, and all of it arrived
    assert sp.exitcode == 0 and not sp.is_alive()


@pytest.mark.process
def test_death_of_the_sampler_is_noticed() -> None:
    with SimGPU.create(SimSpec()) as gpu:
        sp = SamplerProcess([SensorSpec.simulated(gpu)], rate_hz=50)
        assert sp.failure() is None  # not started
        sp.start()
        _wait_first_batch(sp, [])
        assert sp.is_alive() and sp.failure() is None
        os.kill(sp.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while sp.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not sp.is_alive()
        assert sp.exitcode == -signal.SIGKILL
        assert "killed by signal 9" in sp.failure()


@pytest.mark.process
def test_a_sensor_that_cannot_open_ends_the_sampler_with_a_warning() -> None:
    gpu = SimGPU.create(SimSpec())
    gpu.close()  # its segment is gone: the sampler cannot attach
    sp = SamplerProcess([SensorSpec.simulated(gpu)], rate_hz=50)
    sp.start()
    events: list = []
    _drain(sp, 3.0, events)
    sp.stop()
    assert sp.exitcode == 1
    assert "sensor error" in sp.failure()
    warnings = [e for e in events if isinstance(e, RunWarning)]
    assert warnings and "could not open its sensors" in warnings[0].message and warnings[0].source == "sampler"


_INTERMEDIATE = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from wattscope.telemetry import SamplerProcess, SensorSpec, SimSpec
    sp = SamplerProcess([SensorSpec.simulated(SimSpec(energy_read_s=0.0))], rate_hz=100)
    sp.start()
    print(sp.pid, flush=True)
    while True:
        sp.queue.get()
    """
)


@pytest.mark.process
def test_sampler_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _INTERMEDIATE.format(root=str(ROOT))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = parent.stdout.readline()
        sampler_pid = int(line)
        time.sleep(0.3)
        assert not _pid_gone(sampler_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 3.0
        while not _pid_gone(sampler_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _pid_gone(sampler_pid), "sampler kept running after its parent was killed"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"rate_hz": 0}, "rate_hz"),
        ({"rate_hz": 5000}, "rate_hz"),
        ({"energy_hz": 0}, "energy_hz"),
        ({"batch_interval_s": 0}, "batch_interval_s"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        SamplerProcess([SensorSpec.simulated(SimSpec())], **kwargs)
    with pytest.raises(ValueError, match="at least one"):
        SamplerProcess([])


@pytest.mark.process
def test_sampler_module_does_not_import_pandas() -> None:
    code = "import sys, wattscope.telemetry.sampler; print(sorted(m for m in ('pandas', 'torch', 'textual', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
