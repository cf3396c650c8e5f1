"""Traces people can join: samples labelled with their configuration and phase, placed in
wall time by the recording's clock anchor; one CSV per table in a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import synthetic_run
from wattscope import cli, export, provenance, timeline
from wattscope.events import PhaseStarted, now_ns
from wattscope.metrics import run_meta
from wattscope.recording import load

SEED_REC = Path(__file__).resolve().parent.parent / "recordings" / "h100-seed.wattscope"
# Made before recordings kept a clock anchor: the 0.1.0 seed recording.
OLD_REC = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "h100-seed-0.1.0-2026-11-27.wattscope.xz"
ANCHOR = {"unix_ns": 1_795_000_000_123_456_789, "monotonic_ns": synthetic_run.STREAM_T0_NS - 5_000_000}


@pytest.fixture(scope="module")
def stream():
    return synthetic_run.event_stream(phase_s=0.5, repeats=2)


@pytest.fixture(scope="module")
def recording(stream, tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "run.wattscope"
    return load(synthetic_run.record(stream, path, clock_anchor=ANCHOR))


def _expected_labels(stream, t_ns: np.ndarray) -> tuple[list, list]:
    """The labels by brute force: the last PhaseStarted at or before each time."""
    marks = sorted((e for e in stream if isinstance(e, PhaseStarted)), key=lambda e: e.t_ns)
    configs, phases = [], []
    for t in t_ns:
        before = [m for m in marks if m.t_ns <= t]
        configs.append(before[-1].config_id if before else None)
        phases.append(before[-1].phase if before else None)
    return configs, phases


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_samples_carry_config_phase_and_wall_time(recording, stream, tmp_path, fmt) -> None:
    paths = export.export_traces(recording, fmt, tmp_path)
    samples = pd.read_csv(paths[0]) if fmt == "csv" else pd.read_parquet(paths[0])
    t = samples["t_ns"].to_numpy()
    configs, phases = _expected_labels(stream, t)
    got_c = [None if pd.isna(c) else c for c in samples["config_id"]]
    got_p = [None if pd.isna(p) else p for p in samples["phase"]]
    assert got_c == configs and got_p == phases
    assert {"prefill", "decode", "idle", "warmup", "load"} <= set(got_p)
    # Unix time = anchor's Unix time + (monotonic - anchor's monotonic), to the ns.
    offset = ANCHOR["unix_ns"] - ANCHOR["monotonic_ns"]
    assert samples["unix_ns"].astype("int64").tolist() == [int(x) + offset for x in t]
    if fmt == "parquet":
        clock = json.loads(pq.read_schema(paths[0]).metadata[b"wattscope.clock"])
        assert clock == {**ANCHOR, "exact": True}


def test_a_sample_at_a_phase_start_belongs_to_the_new_phase() -> None:
    marks = [PhaseStarted(100, "a", "prefill"), PhaseStarted(200, "a", "decode"), PhaseStarted(300, None, "cooldown")]
    tl = timeline.timeline(marks)
    configs, phases = tl.label(np.array([50, 100, 199, 200, 300, 10_000]))
    assert phases.tolist() == [None, "prefill", "prefill", "decode", "cooldown", "cooldown"]
    assert configs.tolist() == [None, "a", "a", "a", None, None]
    assert [(s.start_ns, s.end_ns) for s in tl.phases] == [(100, 200), (200, 300), (300, 300)]


def test_the_session_records_an_anchor_that_places_now_in_wall_time() -> None:
    anchor = provenance.clock_anchor()
    clock = timeline.wall_clock(run_meta({"clock_anchor": anchor}), None)
    assert clock is not None and clock.exact
    import time

    placed = int(clock.unix(np.array([now_ns()]))[0])
    assert abs(placed - time.time_ns()) < 50_000_000  # the same instant, within scheduling noise


def test_an_older_recording_is_placed_by_its_created_time_and_says_it_is_approximate() -> None:
    rec = load(OLD_REC)
    assert "clock_anchor" not in rec.meta
    tl = timeline.of_recording(rec)
    clock = timeline.wall_clock(run_meta(rec.meta), tl.start_ns)
    assert clock is not None and not clock.exact
    assert clock.unix_ns == 1_795_768_792 * 1_000_000_000  # 2026-11-27T08:39:52+00:00
    assert clock.monotonic_ns == tl.start_ns
    # No anchor and no created: no wall time rather than a guess.
    assert timeline.wall_clock(run_meta({}), tl.start_ns) is None
    assert timeline.wall_clock(run_meta({"created": "2026-11-27T08:39:52"}), tl.start_ns) is None


# --------------------------------------------------------------------- csv folders


def test_all_tables_as_csv_go_into_a_folder_one_file_each(tmp_path) -> None:
    out = tmp_path / "tables"
    code = cli.main(["export", str(SEED_REC), "--format", "csv", "--table", "all", "-o", str(out)])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["crosscheck.csv", "findings.csv", "phases.csv", "power.csv"]
    a = export.analyze(str(SEED_REC))
    for name in ("phases", "power", "crosscheck"):
        back = pd.read_csv(out / f"{name}.csv", comment="#")
        assert len(back) == len(getattr(a, name))
        # Each file is exactly what a one-table export writes.
        assert (out / f"{name}.csv").read_text() == export.export(a, "csv", name)
    phases = pd.read_csv(out / "phases.csv", comment="#")
    assert phases["prefill_energy_j"].tolist() == a.phases["prefill_energy_j"].tolist()


@pytest.mark.parametrize("where", ["stdout", "file.csv", "existing-file"])
def test_all_tables_as_csv_elsewhere_is_refused_with_what_to_do(tmp_path, capsys, where) -> None:
    args = ["export", str(SEED_REC), "--format", "csv"]
    if where == "file.csv":
        args += ["-o", str(tmp_path / "all.csv")]
    elif where == "existing-file":
        (tmp_path / "taken").write_text("x")
        args += ["-o", str(tmp_path / "taken")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one CSV per table" in err and "-o DIR" in err and "--table" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["taken"] if where == "existing-file" else [])
