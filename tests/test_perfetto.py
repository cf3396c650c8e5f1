"""`wattscope export REC --format perfetto`: a valid Trace Event Format file whose windows
round-trip and whose timestamps carry the run's wall-clock anchor."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import synthetic_run
from wattscope import cli, perfetto, timeline
from wattscope.metrics import run_meta
from wattscope.recording import load

ROOT = Path(__file__).resolve().parent.parent
SEED_REC = ROOT / "recordings" / "h100-seed.wattscope"
SEED_CSV = ROOT / "tests" / "data" / "seed_rtx_pro_6000.csv"
ANCHOR = {"unix_ns": 1_795_000_000_123_456_789, "monotonic_ns": synthetic_run.STREAM_T0_NS - 5_000_000}


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    path = tmp_path_factory.mktemp("perfetto") / "rounds.wattscope"
    return synthetic_run.record(synthetic_run.event_stream(phase_s=0.3, repeats=3), path, clock_anchor=ANCHOR)


def validate(trace: dict) -> None:
    """The Trace Event Format rules the file must keep for Perfetto and chrome://tracing."""
    assert isinstance(trace["traceEvents"], list) and trace["displayTimeUnit"] in ("ms", "ns")
    last_ts: dict[tuple, float] = {}
    open_slices: dict[tuple, list[float]] = defaultdict(list)
    for e in trace["traceEvents"]:
        assert {"ph", "pid", "name"} <= e.keys(), e
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name") and "name" in e["args"]
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        track = (e["pid"], e["name"]) if e["ph"] == "C" else (e["pid"], e["tid"])
        assert e["ts"] >= last_ts.get(track, -1.0), f"ts goes back on {track}"
        last_ts[track] = e["ts"]
        if e["ph"] == "X":
            assert e["dur"] >= 0
            stack = open_slices[track]
            while stack and stack[-1] <= e["ts"] + 1e-3:  # ended (µs with ns digits: float slack)
                stack.pop()
            # A slice that starts inside another ends inside it: slices nest.
            assert not stack or e["ts"] + e["dur"] <= stack[-1] + 1e-3, f"{e['name']} crosses its parent"
            stack.append(e["ts"] + e["dur"])
        elif e["ph"] == "C":
            assert e["args"] and all(isinstance(v, float) for v in e["args"].values())
        elif e["ph"] == "i":
            assert e["s"] in ("g", "p", "t")
        else:
            raise AssertionError(f"unexpected phase type {e['ph']}")
    json.dumps(trace, allow_nan=False)  # strict JSON: no NaN


@pytest.mark.parametrize("which", ["rounds", "seed"])
def test_structure_is_valid_and_every_window_round_trips(rounds, which) -> None:
    path = rounds if which == "rounds" else SEED_REC
    rec = load(path)
    trace = perfetto.trace(path)
    validate(trace)
    events = trace["traceEvents"]
    shift = trace["metadata"]["wattscope"]["monotonic_ns_at_ts_0"]
    windows = [e for e in events if e["ph"] == "X" and e["tid"] == perfetto.WINDOWS_TID]
    assert len(windows) == len(rec.windows)
    for e, (_, w) in zip(windows, rec.windows.sort_values("start_ns", kind="stable").iterrows()):
        assert e["args"]["energy_j"] == w["energy_j"] and e["args"]["calls"] == w["calls"]
        assert e["args"]["phase"] == w["phase"] and e["cat"] == w["role"]
        assert e["ts"] == pytest.approx((w["start_ns"] - shift) / 1000, abs=1e-3)
        assert e["ts"] + e["dur"] == pytest.approx((w["end_ns"] - shift) / 1000, abs=2e-3)
    assert sum(e["args"]["energy_j"] for e in windows) == pytest.approx(rec.windows["energy_j"].sum(), rel=1e-12)
    tl = timeline.of_recording(rec)
    phases = [e for e in events if e.get("cat") == "phase"]
    assert len(phases) == len(tl.phases)
    assert len([e for e in events if e["ph"] == "i"]) == len(tl.warnings)
    power = [e for e in events if e["ph"] == "C" and e["name"] == "GPU 0 power (W)"]
    assert [e["args"]["W"] for e in power] == rec.samples["power_w"].dropna().tolist()
    energy = [e for e in events if e["ph"] == "C" and e["name"] == "GPU 0 energy counter (J)"]
    assert len(energy) == rec.samples["energy_j"].notna().sum() > 0


def test_groups_hold_their_configurations_and_phases(rounds) -> None:
    events = perfetto.trace(rounds)["traceEvents"]
    groups = [e for e in events if e.get("cat") == "group"]
    configs = [e for e in events if e.get("cat") == "config"]
    assert [g["name"] for g in groups] == ["Qwen2-1.5B b1"]
    assert groups[0]["args"]["configs"] == ["Qwen2-1.5B/b1/fp16", "Qwen2-1.5B/b1/int8", "Qwen2-1.5B/b1/nf4"]
    # Rounds rotate between the rows: each row has several stretches inside its group.
    assert {c["name"] for c in configs} == set(groups[0]["args"]["configs"]) and len(configs) > 3
    g = groups[0]
    assert all(g["ts"] <= c["ts"] and c["ts"] + c["dur"] <= g["ts"] + g["dur"] + 1e-3 for c in configs)


def test_timestamps_are_unix_time_from_the_anchor(rounds) -> None:
    trace = perfetto.trace(rounds)
    base = trace["baseTimeNanoseconds"]
    assert base % 1_000_000_000 == 0
    assert trace["metadata"]["wattscope"]["wall_clock"]["exact"] is True
    rec = load(rounds)
    clock = timeline.wall_clock(run_meta(rec.meta), None)
    first = next(e for e in trace["traceEvents"] if e["ph"] == "X" and e["tid"] == perfetto.WINDOWS_TID)
    w = rec.windows.sort_values("start_ns").iloc[0]
    unix = int(clock.unix(np.array([w["start_ns"]]))[0])
    assert base + round(first["ts"] * 1000) == unix  # to the nanosecond


def test_cli_writes_the_file_and_refuses_what_has_no_timeline(rounds, tmp_path, capsys) -> None:
    out = tmp_path / "run.json"
    assert cli.main(["export", str(rounds), "--format", "perfetto", "-o", str(out)]) == 0
    validate(json.loads(out.read_text()))
    assert cli.main(["export", str(SEED_CSV), "--format", "perfetto", "-o", str(tmp_path / "t.json")]) == 2
    assert "an imported table has no timeline" in capsys.readouterr().err
    assert cli.main(["export", str(rounds), str(rounds), "--format", "perfetto", "-o", str(tmp_path / "t.json")]) == 2
    assert "one recording" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
