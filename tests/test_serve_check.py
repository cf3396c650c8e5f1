"""benchmarks/serve_check.py, which made the serving JSONs the README's figures come from:
on an engine-like stream with a cost per step (serve_stream.py), its phases carry the
report's fits, the step-log fit beside them, the step counts of both, and the counter's
power."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serve_stream import IDLE_W, StreamRecording, event_stream

from wattscope import events as ev


def test_each_phase_holds_both_fits_the_step_counts_and_the_power(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    import benchmark_script

    sc = benchmark_script.load("serve_check")
    steps: dict = {}
    stream = event_stream(step_j=0.5, steps_out=steps)
    # The engine's log, as an in-process engine writes it (each phase's steps, ns).
    s = 1_000_000_000
    logged = [[10 * s + round(a * s), 10 * s + round(b * s), p, d] for key in steps for a, b, p, d in steps[key]]
    stream = sorted([*stream, ev.EngineSteps(stream[-1].t_ns, logged)], key=lambda e: e.t_ns)
    monkeypatch.setattr(sc.wattscope, "load", lambda path: StreamRecording(stream))
    out = tmp_path / "check.json"
    monkeypatch.setattr("sys.argv", ["serve_check.py", "synthetic", "-o", str(out)])
    assert sc.main() == 0
    (run,) = json.loads(out.read_text())
    assert len(run["phases"]) == 4
    for row in run["phases"]:
        key = (row["precision"], [4.0, 12.0].index(row["offered_rps"]))
        assert row["log_steps"] == len(steps[key]) == row["stream_steps"]
        assert row["steps_corr"] > 0.99 and row["merged_bursts"] == 0.0
        streamed, logged_fit, two = row["streamed_fit"], row["steps_fit"], row["tokens_only_fit"]
        assert streamed["terms"] == logged_fit["terms"] == 3 and two["terms"] == 2
        assert row["decode_agrees"] and row["prefill_agrees"]
        assert streamed["measured_j"] == pytest.approx(streamed["idle_j"] + streamed["prefill_j"] + streamed["decode_j"])
        # The idle window's counter power is the stream's idle power; the load's is above it.
        assert row["idle_counter_w"]["value"] == pytest.approx(IDLE_W, rel=1e-3)
        assert row["counter_power_w"]["value"] > row["idle_counter_w"]["value"]
        assert row["temp_c"] == [40.0, 40.0]  # the stream's samples hold 40 °C
        # The stream's tokens cost nothing for their context: the fourth term finds little,
        # and its all-in figures stay on the report's.
        ctx = row["context_fit"]
        assert ctx["j_per_kilotoken_context"]["low"] < 0 < ctx["j_per_kilotoken_context"]["high"]
        for fig in ("j_per_prefill_token", "j_per_decode_token"):
            assert ctx[fig]["value"] == pytest.approx(streamed[fig]["value"], rel=0.1)
