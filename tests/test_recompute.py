"""A configuration whose result was never stored (the run ended between its
ConfigFinished and its ConfigResult) is recomputed from the recorded windows, exactly as
the live session derived it, and replay and export say so."""

from __future__ import annotations

from pathlib import Path

from synthetic_run import event_stream

import wattscope
from wattscope import analysis
from wattscope.events import ConfigResult, RunWarning
from wattscope.recording import Recorder


def _record(path: Path, drop: str) -> tuple[list, ConfigResult]:
    events = event_stream()
    lost = next(e for e in events if isinstance(e, ConfigResult) and e.config_id == drop)
    rec = Recorder(path)
    for e in events:
        if e is not lost:
            rec.write(e)
    rec.close()
    return events, lost


def test_a_missing_result_is_recomputed_from_the_windows(tmp_path: Path) -> None:
    path = tmp_path / "cut.wattscope"
    _, lost = _record(path, "Qwen2-1.5B/b1/int8")
    rec = wattscope.load(path)
    row = rec.results.set_index("config_id").loc["Qwen2-1.5B/b1/int8"]
    for name, value in lost.figures.items():
        assert row[name] == value or (value != value and row[name] != row[name]), name
    assert any("result recomputed from its recorded windows" in m for m in rec.warnings["message"])
    # The replayed stream carries it right after its ConfigFinished, with the warning.
    kinds = [(e.kind, getattr(e, "config_id", None)) for e in rec.events(samples=False)]
    i = kinds.index(("config_finished", "Qwen2-1.5B/b1/int8"))
    assert kinds[i + 1] == ("config_result", "Qwen2-1.5B/b1/int8")
    assert kinds[i + 2] == ("warning", "Qwen2-1.5B/b1/int8")
    again = next(e for e in rec.events(samples=False) if isinstance(e, ConfigResult) and e.config_id == lost.config_id)
    assert repr(again.figures) == repr(lost.figures)  # repr: NaN figures compare equal
    # The export shows the row and its ratios like any other.
    p = analysis.analyze(rec).phases.set_index("precision").loc["INT8"]
    assert p["prefill_energy_ratio"] == lost.figures["prefill_energy_ratio"]


def test_a_complete_recording_recomputes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "whole.wattscope"
    events = event_stream()
    rec = Recorder(path)
    for e in events:
        rec.write(e)
    rec.close()
    r = wattscope.load(path)
    assert not any("recomputed" in m for m in r.warnings["message"])
    assert len(r.results) == sum(isinstance(e, ConfigResult) for e in events)
    assert not [e for e in r.events(samples=False) if isinstance(e, RunWarning) and "recomputed" in e.message]
