"""Recordings: round trip, the replay stream, the cross-check integral, bad files, and
crash safety against a real process killed with SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import wattscope
from wattscope.events import (
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    ConfigResult,
    ConfigStarted,
    PhaseStarted,
    RunEnded,
    RunStarted,
    RunWarning,
    Samples,
    Window,
)
from wattscope.recording import REPLAY_BATCH_NS, Recorder, RecordingError

NAN = float("nan")


def _rows(t0: int, n: int, period_ns: int, power: float) -> list[tuple]:
    return [
        (t0 + i * period_ns, 0, power, power - 1, NAN if i % 10 else 100.0 + i, 1980.0, 50.0, 40.0, 1000.0, 1)
        for i in range(n)
    ]


def _write_run(path: Path) -> dict:
    """A small run: 2 s of 400 W samples at 100 Hz, one window over its middle second."""
    t0 = 1_000_000_000
    rec = Recorder(path)
    meta = {"gpu": {"index": 0, "name": "Test GPU", "tdp_w": 700.0}, "simulated": True}
    rec.write(RunStarted(t0, meta))
    rec.write(ConfigStarted(t0 + 1, "M/b1/fp16", 0, 1, "synthetic:M", 1, "fp16", True, 3))
    rec.write(PhaseStarted(t0 + 2, "M/b1/fp16", "prefill", 1))
    rows = _rows(t0 + 10_000_000, 200, 10_000_000, 400.0)
    for i in range(0, 200, 10):
        rec.write(Samples(rows[i + 9][0], rows[i : i + 10]))
    w = Window(t0 + 1_500_000_000, "M/b1/fp16", "prefill", "measure", 1,
               t0 + 500_000_000, t0 + 1_500_000_000, 10.0, 410.0, 20, 0, 2560)
    rec.write(w)
    rec.write(RunWarning(t0 + 1_600_000_000, "metrics", "CV high", "M/b1/fp16"))
    rec.write(ConfigResult(t0 + 1_700_000_000, "M/b1/fp16", "synthetic:M", 1, "fp16", True, True, "",
                           {"prefill_energy_j": 20.0, "decode_energy_j": NAN}))
    rec.write(RunEnded(t0 + 2_500_000_000, "completed"))
    rec.close()
    return {"rows": rows, "window": w, "meta": meta}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.wattscope"
    _write_run(path)
    assert not Path(str(path) + "-wal").exists()  # finished file is one self-contained file
    rec = wattscope.load(path)
    assert rec.meta["gpu"]["name"] == "Test GPU"
    assert rec.meta["schema_version"] == SCHEMA_VERSION
    assert rec.meta["status"] == "completed" and rec.complete
    assert list(rec.samples.columns) == list(SAMPLE_COLUMNS)
    assert len(rec.samples) == 200
    assert rec.samples["energy_j"].notna().sum() == 20  # NaN survives as NaN, not 0
    assert rec.samples["t_ns"].is_monotonic_increasing
    w = rec.windows.iloc[0]
    assert w["energy_j"] == pytest.approx(400.0)
    assert w["duration_s"] == pytest.approx(1.0)
    assert w["power_w"] == pytest.approx(400.0)
    # Constant 400 W over 1 s of samples: the cross-check integral agrees with the counter.
    assert w["integrated_j"] == pytest.approx(400.0, rel=1e-9)
    r = rec.results.iloc[0]
    assert r["prefill_energy_j"] == 20.0 and math.isnan(r["decode_energy_j"])
    assert bool(r["ok"]) and r["precision"] == "fp16"
    assert rec.warnings["message"].tolist() == ["CV high"]


def test_sql_views_are_queryable(tmp_path: Path) -> None:
    path = tmp_path / "run.wattscope"
    _write_run(path)
    db = sqlite3.connect(path)
    (calls, energy) = db.execute("SELECT calls, energy_end_j - energy_start_j FROM windows").fetchone()
    assert (calls, energy) == (20, 400.0)
    assert db.execute("SELECT precision FROM results").fetchone() == ("fp16",)


def test_event_stream_replays_in_order_with_batched_samples(tmp_path: Path) -> None:
    path = tmp_path / "run.wattscope"
    written = _write_run(path)
    events = list(wattscope.load(path).events())
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunEnded)
    times = [e.t_ns for e in events]
    assert times == sorted(times)
    batches = [e for e in events if isinstance(e, Samples)]
    replayed = [r for b in batches for r in b.rows]
    assert len(replayed) == 200
    assert [r[0] for r in replayed] == [r[0] for r in written["rows"]]
    assert all(b.rows[-1][0] - b.rows[0][0] < REPLAY_BATCH_NS for b in batches)
    # no batch straddles another event: the window event falls between batches
    wi = next(i for i, e in enumerate(events) if isinstance(e, Window))
    assert all(r[0] <= events[wi].t_ns for b in events[:wi] if isinstance(b, Samples) for r in b.rows)
    assert events[wi] == written["window"]
    # a time range
    part = list(wattscope.load(path).events(2_400_000_000, 2_600_000_000))
    assert all(2_400_000_000 <= e.t_ns <= 2_600_000_000 for e in part)
    assert any(isinstance(e, Window) for e in part)


def test_integral_is_trapezoid_of_instant_power() -> None:
    from wattscope.recording import _integrate

    t = np.arange(0, 11) * 1e8  # 0..1 s
    p = np.linspace(100, 200, 11)  # linear ramp: exact trapezoid = 150 J over 1 s
    out = _integrate(t, p, np.array([0.0, 2.5e8, 0.0]), np.array([1e9, 7.5e8, 2e9]))
    assert out[0] == pytest.approx(150.0)
    assert out[1] == pytest.approx(0.5 * 150.0, rel=1e-9)  # 125..175 W over 0.5 s
    assert math.isnan(out[2])  # the window runs past the samples: no silent under-count


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "run.wattscope"
    path.write_text("x")
    with pytest.raises(RecordingError, match="already exists"):
        Recorder(path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="not found"):
        wattscope.load(tmp_path / "none.wattscope")
    junk = tmp_path / "junk.wattscope"
    junk.write_bytes(b"hello")
    with pytest.raises(RecordingError, match="junk.wattscope: not a wattscope recording"):
        wattscope.load(junk)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.commit()
    with pytest.raises(RecordingError, match="not a wattscope recording"):
        wattscope.load(other)


@pytest.mark.parametrize("pack", ["xz", "gzip"])
def test_a_compressed_copy_reads_as_the_recording_itself(tmp_path: Path, pack: str) -> None:
    import gzip
    import lzma

    from wattscope.analysis import open_source

    path = tmp_path / "run.wattscope"
    _write_run(path)
    compress, suffix = (lzma.compress, ".xz") if pack == "xz" else (gzip.compress, ".gz")
    packed = tmp_path / f"run.wattscope{suffix}"
    packed.write_bytes(compress(path.read_bytes()))
    with wattscope.load(path) as plain, wattscope.load(packed) as copy:
        assert copy.meta == plain.meta and copy.complete
        for table in ("samples", "windows", "results"):
            assert getattr(copy, table).equals(getattr(plain, table)), table
        assert [type(e).__name__ for e in copy.events()] == [type(e).__name__ for e in plain.events()]
    assert open_source(packed).label == "run"  # tables name it as they name the plain file


def test_damaged_compressed_copies_are_clear_errors(tmp_path: Path) -> None:
    import gzip
    import lzma

    path = tmp_path / "run.wattscope"
    _write_run(path)
    cut = tmp_path / "cut.wattscope.xz"
    cut.write_bytes(lzma.compress(path.read_bytes())[:200])
    with pytest.raises(RecordingError, match="cut.wattscope.xz: damaged compressed recording"):
        wattscope.load(cut)
    text = tmp_path / "text.wattscope.xz"
    text.write_bytes(lzma.compress(b"not a database at all"))
    with pytest.raises(RecordingError, match="text.wattscope.xz: not a wattscope recording .compressed"):
        wattscope.load(text)
    # Damage inside a gzip stream: a block of the reserved type is zlib's own error (not an
    # OSError); a wrong checksum in the trailer is gzip's (an OSError).
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    crc = bytearray(gzip.compress(path.read_bytes()))
    crc[-8] ^= 0xFF
    for packed, what in ((header + b"\x07" + bytes(16), "invalid block type"), (bytes(crc), "CRC check failed")):
        bad = tmp_path / "bad.wattscope.gz"
        bad.write_bytes(packed)
        with pytest.raises(RecordingError, match=f"bad.wattscope.gz: damaged compressed recording .*{what}"):
            wattscope.load(bad)


def test_a_compressed_copy_of_a_wal_mode_file_and_the_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lzma

    from wattscope import recording

    path = tmp_path / "run.wattscope"
    _write_run(path)
    data = bytearray(path.read_bytes())
    data[18:20] = b"\x02\x02"  # the header of a file copied while its run was going (WAL mode)
    copy = tmp_path / "live.wattscope.xz"
    copy.write_bytes(lzma.compress(bytes(data)))
    with wattscope.load(copy) as rec, wattscope.load(path) as plain:
        assert rec.samples.equals(plain.samples)
    monkeypatch.setattr(recording, "MAX_DECOMPRESSED_BYTES", len(data) // 2)
    with pytest.raises(RecordingError, match="live.wattscope.xz: over .* too large to read in memory; decompress it first"):
        wattscope.load(copy)


def test_newer_schema_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "run.wattscope"
    _write_run(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(RecordingError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        wattscope.load(path)


WRITER = textwrap.dedent(
    """
    import sys, time
    from wattscope.events import RunStarted, Samples, now_ns
    from wattscope.recording import Recorder
    rec = Recorder(sys.argv[1])
    rec.write(RunStarted(now_ns(), {"gpu": {"index": 0}}))
    nan = float("nan")
    while True:
        t = now_ns()
        rec.write(Samples(t, [(t, 0, 300.0, 300.0, nan, nan, nan, nan, nan, 1)]))
        print(t, flush=True)
        time.sleep(0.01)
    """
)


@pytest.mark.process
def test_kill_9_loses_at_most_one_second(tmp_path: Path) -> None:
    path = tmp_path / "killed.wattscope"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    # Timed from the first row written, not from the start of an interpreter that may
    # take seconds to import on a loaded machine.
    written = [int(proc.stdout.readline())]
    start = time.monotonic()
    while time.monotonic() - start < 2.5:
        written.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rec = wattscope.load(path)
    assert not rec.complete and rec.meta["status"] == "running"
    last = written[-1]
    older = {t for t in written if t <= last - 1_000_000_000}
    assert len(older) >= 50  # 1.5 s of rows at up to 100 rows/s
    assert older <= set(rec.samples["t_ns"])  # nothing written more than 1 s before the kill is lost
    assert last - int(rec.samples["t_ns"].max()) <= 1_000_000_000
