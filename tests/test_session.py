"""The live pipeline end to end on the simulated GPU: real sampler and runner processes,
the recorder and the headless consumer, driven through the CLI as a user would, plus the
faults: Ctrl-C, kill -9, and a sampler that dies."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wattscope
from wattscope import config
from wattscope.bench.runner import RunnerProcess
from wattscope.events import now_ns
from wattscope.session import Session

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.process

TWO_ROWS = """
name = "two"
[protocol]
min_rounds = 2
max_rounds = 2
max_warmup_rounds = 2
[[matrix]]
models = ["synthetic:Qwen2-1.5B"]
batches = [1]
precisions = ["fp16", "int8"]
"""


def _nan_as_none(figures: dict) -> dict:
    """A recording stores NaN as JSON null."""
    return {k: None if v is None or v != v else v for k, v in figures.items()}


def _child(name: str, timeout: float = 10.0) -> mp.Process:
    """This process's live child of that name (the session's sampler or runner)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in mp.active_children() if p.name == name]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, [p.name for p in mp.active_children()]
            return found[0]
        time.sleep(0.05)


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wattscope", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def test_seed_sweep_on_the_simulated_gpu_records_15_rows(tmp_path: Path) -> None:
    out = tmp_path / "seed.wattscope"
    proc = _cli("run", "configs/seed.toml", "--sim", "--headless", "-o", str(out))
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout
    assert "run completed" in stdout  # plain progress lines when not a terminal
    rec = wattscope.load(out)
    assert rec.meta["status"] == "completed" and rec.meta["simulated"] is True
    assert rec.meta["gpu"]["tdp_w"] == 700.0
    assert rec.meta["gpu"]["refresh_s"]["power_w"] == pytest.approx(config.Sim().refresh_s, rel=0.3)
    assert rec.meta["sweep"]["text"] == (ROOT / "configs" / "seed.toml").read_text()
    assert {"torch", "transformers", "bitsandbytes", "textual"} <= set(rec.meta["packages"])
    res = rec.results
    assert len(res) == 15 and res["ok"].all()
    assert (res["decode_steps"] == 32).all()
    # Every figure is the one metrics derives from the recorded windows.
    from wattscope import metrics

    events = list(rec.events(samples=False))
    windows = [e for e in events if e.kind == "window"]
    started = {e.config_id: e for e in events if e.kind == "config_started"}
    finished = {e.config_id: e for e in events if e.kind == "config_finished"}
    stored_results = [e for e in events if e.kind == "config_result"]
    assert len(stored_results) == 15
    ci_target = rec.meta["sweep"]["protocol"]["ci_target"]
    for stored in stored_results:
        again, _ = metrics.group_result(
            started[stored.config_id], finished[stored.config_id], started.values(), windows, ci_target
        )
        assert _nan_as_none(again.figures) == _nan_as_none(stored.figures)
    # Every quantised row carries its ratios to FP16 with a 95% interval around them.
    q = res[res["precision"] != "fp16"]
    for name in ("prefill_energy_ratio", "decode_energy_ratio", "decode_speed_ratio"):
        assert ((q[f"{name}_low"] <= q[name]) & (q[name] <= q[f"{name}_high"])).all()
        assert (q["rounds"] >= 3).all()
    assert len({w.group for w in windows if w.phase == "idle"}) == 5  # an idle baseline per group
    # Samples cover the run at ~100 Hz.
    s = rec.samples
    span_s = (s["t_ns"].max() - s["t_ns"].min()) / 1e9
    assert len(s) / span_s == pytest.approx(100, rel=0.1)


def test_ctrl_c_stops_cleanly_and_finalises(tmp_path: Path) -> None:
    out = tmp_path / "int.wattscope"
    proc = _cli("run", "configs/seed.toml", "--sim", "--headless", "-o", str(out))
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout
    rec = wattscope.load(out)
    assert rec.meta["status"] == "interrupted"
    assert not Path(str(out) + "-wal").exists()  # finalised into one file
    assert 0 < len(rec.results) < 15
    assert len(rec.samples) > 100


def test_kill_9_of_wattscope_keeps_a_loadable_recording(tmp_path: Path) -> None:
    out = tmp_path / "killed.wattscope"
    proc = _cli("run", "configs/seed.toml", "--sim", "--headless", "-o", str(out), start_new_session=True)
    time.sleep(6)
    killed_at = wattscope.events.now_ns()
    os.kill(proc.pid, signal.SIGKILL)
    # The children notice their parent died and exit on their own, closing the output.
    proc.communicate(timeout=10)
    rec = wattscope.load(out)
    assert rec.meta["status"] == "running" and not rec.complete
    assert killed_at - int(rec.samples["t_ns"].max()) <= 1_000_000_000
    deadline = time.monotonic() + 5
    while True:
        leftover = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not leftover or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert leftover == []  # no orphaned runner keeps the GPU busy


def test_a_dead_sampler_is_reported_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep = config.parse(TWO_ROWS, str(tmp_path / "two.toml"))
    session = Session(sweep, tmp_path / "s.wattscope", sim=True)
    session.start()
    os.kill(_child("wattscope-sampler").pid, signal.SIGKILL)
    assert session.wait(120)
    rec = wattscope.load(tmp_path / "s.wattscope")
    assert rec.meta["status"] == "completed"
    assert rec.warnings["message"].str.contains("sampler process died").any()
    assert len(rec.results) == 2


def test_a_runner_that_dies_becomes_a_failed_row_and_the_rest_runs(tmp_path: Path) -> None:
    # Two groups: the runner dies inside the first; a new one measures the second.
    sweep = config.parse(TWO_ROWS.replace("batches = [1]", "batches = [1, 8]"), str(tmp_path / "two.toml"))
    session = Session(sweep, tmp_path / "r.wattscope", sim=True)
    session.start()
    # Once the first configuration is under way, kill the runner hard.
    deadline = time.monotonic() + 30
    while session.state.snapshot(now_ns()).config is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(_child("wattscope-runner").pid, signal.SIGKILL)
    assert session.wait(120)
    rec = wattscope.load(tmp_path / "r.wattscope")
    res = rec.results.set_index("config_id")
    for cid in ("Qwen2-1.5B/b1/fp16", "Qwen2-1.5B/b1/int8"):
        assert not res.loc[cid, "ok"]
        assert "runner process died" in res.loc[cid, "reason"]
    assert res.loc["Qwen2-1.5B/b8/fp16", "ok"] and res.loc["Qwen2-1.5B/b8/int8", "ok"]
    assert rec.meta["status"] == "completed"


def test_a_start_that_fails_leaves_no_file_and_no_child(tmp_path: Path, monkeypatch) -> None:
    sweep = config.parse(TWO_ROWS, str(tmp_path / "two.toml"))
    out = tmp_path / "never.wattscope"
    session = Session(sweep, out, sim=True)

    def broken(self):
        raise OSError("cannot start the runner")

    monkeypatch.setattr(RunnerProcess, "start", broken)
    with pytest.raises(OSError, match="cannot start the runner"):
        session.start()
    assert not out.exists()
    assert not [p.name for p in mp.active_children() if p.name.startswith("wattscope-")]  # the sampler it started is gone
