"""Machine-readable output: `run --jsonl` prints the event stream as the recording holds
it, one JSON object per line; `devices --json` describes the GPUs as JSON."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from wattscope import cli
from wattscope.events import SAMPLE_COLUMNS, Event, RunStarted, Samples
from wattscope.jsonl import JsonLines
from wattscope.telemetry.sensor import SIGNALS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.process
def test_run_jsonl_prints_the_recorded_stream_line_for_line(tmp_path) -> None:
    out = tmp_path / "run.wattscope"
    proc = subprocess.run(
        [sys.executable, "-m", "wattscope", "run", str(ROOT / "configs" / "quick.toml"), "--sim", "--jsonl",
         "-o", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    events = [Event.from_dict(json.loads(line)) for line in lines]  # every line is one event
    assert events[0].kind == "run_started" and events[-1].kind == "run_ended"
    assert "recording:" in proc.stderr and "recording:" not in proc.stdout
    db = sqlite3.connect(out)
    stored = [r[0] for r in db.execute("SELECT json FROM events ORDER BY seq")]
    # Every non-sample event is byte for byte what the recording stores, in its order.
    assert [line for line, e in zip(lines, events) if not isinstance(e, Samples)] == stored
    rows = [r for e in events if isinstance(e, Samples) for r in e.rows]
    assert len(rows) == db.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
    assert all(len(r) == len(SAMPLE_COLUMNS) for r in rows)
    assert {"config_started", "phase_started", "window", "config_result"} <= {e.kind for e in events}


def test_a_closed_reader_stops_the_lines_and_asks_once_to_stop_the_run() -> None:
    class ClosedPipe:
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            raise BrokenPipeError

        def flush(self) -> None:
            pass

    stops: list[bool] = []
    out = ClosedPipe()
    lines = JsonLines(out, on_closed=lambda: stops.append(True))  # type: ignore[arg-type]
    for i in range(3):
        lines(RunStarted(i, {}))
    assert lines.closed and stops == [True] and out.writes == 1


def test_lines_are_strict_json_with_nan_as_null(capsys) -> None:
    lines = JsonLines(sys.stdout)
    lines(Samples(5, [(5, 0, float("nan"), 1.0, float("nan"), 0.0, 0.0, 0.0, 0.0, 1)]))
    text = capsys.readouterr().out
    assert text.count("\n") == 1 and "NaN" not in text
    assert json.loads(text) == {"t_ns": 5, "rows": [[5, 0, None, 1.0, None, 0.0, 0.0, 0.0, 0.0, 1]], "kind": "samples"}


def test_devices_json_describes_the_simulated_gpu(capsys) -> None:
    assert cli.main(["devices", "--sim", "--json"]) == 0
    devs = json.loads(capsys.readouterr().out)
    assert len(devs) == 1
    gpu = devs[0]
    assert gpu["name"] == "Simulated H100" and gpu["tdp_w"] == 700.0 and gpu["simulated"] is True
    assert set(gpu["signals"]) == set(SIGNALS)
    assert gpu["signals"]["power_w"]["supported"] is True
    assert gpu["signals"]["power_w"]["refresh_s"] == pytest.approx(0.1, rel=0.2)
    assert gpu["read_costs"]["read_us_median"] > 0
