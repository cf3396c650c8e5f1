"""Drive the real CLI in tmux: `wattscope demo` (replay of the bundled recording) and
`wattscope run --sim` (live), read the screen with capture-pane, quit with q.

Skipped only when tmux is missing. A command that exits before drawing the app is a
failure that quotes the command's last output lines."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


class Pane:
    def __init__(self, command: str, width: int = 100, height: int = 30, env: dict[str, str] | None = None) -> None:
        self.name = f"wattscope-test-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        shell = f"cd {shlex.quote(str(ROOT))} && env {exports} {command}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                        "sh", "-c", shell], check=True)
        subprocess.run(["tmux", "set-option", "-t", self.name, "remain-on-exit", "on"], check=True)

    def text(self) -> str:
        r = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-", "-t", self.name], capture_output=True, text=True)
        return r.stdout

    def dead(self) -> bool:
        r = subprocess.run(["tmux", "display-message", "-p", "-t", self.name, "#{pane_dead}"],
                           capture_output=True, text=True)
        return r.stdout.strip() != "0"

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, *needles: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            if self.dead():
                # The command may have written its last lines between the capture above and
                # its exit: what a dead pane holds is final, so read it once more.
                return self.text()
            time.sleep(0.2)
        return text

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def _started(pane: Pane, text: str, what: str) -> None:
    if "wattscope" in text and ("REPLAY" in text or "LIVE" in text):
        return
    if pane.dead():
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Pane is dead")]
        pytest.fail(f"{what} exited before drawing the app: {' '.join(lines[-3:]) or 'no output'}")
    pytest.fail(f"{what} is running but the app never appeared:\n{text}")


def _wait_dead(pane: Pane, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pane.dead():
            return True
        time.sleep(0.2)
    return False


def test_demo_shows_power_phase_tdp_and_table_and_q_quits() -> None:
    pane = Pane(f"{shlex.quote(sys.executable)} -m wattscope demo", env={"NO_COLOR": "1"})
    try:
        text = pane.wait_for("TDP", "Phase", timeout=30)
        _started(pane, text, "wattscope demo")
        assert "REPLAY" in text
        assert " W " in text and "% of " in text and "W TDP" in text  # power and %TDP
        assert "%TDP" in text
        pane.keys("G")  # the end: every result of the recording is in the table
        text = pane.wait_for("1.00x", "FP16", timeout=15)
        assert "Model" in text and "FP16" in text and "1.00x" in text, text
        pane.keys("q")
        assert _wait_dead(pane), pane.text()
    finally:
        pane.close()


def test_live_sim_run_quit_asks_then_stops_and_keeps_the_recording(tmp_path: Path) -> None:
    out = tmp_path / "live.wattscope"
    cmd = f"{shlex.quote(sys.executable)} -m wattscope run configs/quick.toml --sim -o {shlex.quote(str(out))}"
    pane = Pane(cmd, env={"TERM": os.environ.get("TERM", "xterm-256color")})
    try:
        text = pane.wait_for("TDP", "Phase", timeout=60)
        _started(pane, text, "wattscope run --sim")
        assert "LIVE" in text and "W TDP" in text and "%TDP" in text
        pane.keys("q")
        text = pane.wait_for("Stop the runner", timeout=10)
        if "completed" not in text:
            assert "Stop the runner" in text, text
            pane.keys("y")
        assert _wait_dead(pane, 60), pane.text()
        assert out.is_file()
    finally:
        pane.close()


def test_replay_of_a_recording_file_keys_and_no_color(tmp_path: Path) -> None:
    from wattscope.recording import Recorder
    from synthetic_run import event_stream, result_cells, result_of

    path = tmp_path / "synthetic.wattscope"
    rec = Recorder(path)
    events = event_stream(configs=[("Qwen2-1.5B", 1, "fp16"), ("Qwen2-1.5B", 1, "int8"), ("Qwen2-1.5B", 1, "nf4")])
    for e in events:
        rec.write(e)
    rec.close()
    # The group's rows come when its rounds are over (~30 s in); 10 s in, none is.
    assert result_of(events, "Qwen2-1.5B/b1/fp16").t_ns > events[0].t_ns + 10 * 10**9
    fp16 = result_cells(events, "Qwen2-1.5B/b1/fp16").split()
    int8 = result_cells(events, "Qwen2-1.5B/b1/int8").split()
    pane = Pane(f"{shlex.quote(sys.executable)} -m wattscope replay {shlex.quote(str(path))}",
                width=80, height=24, env={"NO_COLOR": "1"})
    try:
        text = pane.wait_for("TDP", "Phase", timeout=30)
        _started(pane, text, "wattscope replay")
        pane.keys("space", "g")  # pause at the start, then seek into the first round
        pane.keys("Right", "Right", "Left")
        text = pane.wait_for("00:10/", "Results 0/3", timeout=10)
        assert "00:10/" in text and "REPLAY ⏸" in text and "Qwen2-1.5B b1" in text, text
        assert fp16[0] not in text and int8[3] not in text, text  # no row yet
        # Without colour the phases stay apart by their marks under the graph.
        strip = next(line for line in text.splitlines() if "└" in line)
        assert {".", "l", "P", "D"} <= set(strip), strip
        pane.keys("G")
        # The table and the warnings line are separate widgets: wait for both to be drawn.
        text = pane.wait_for(fp16[0], int8[3], "Results 3/3", "Qwen2-1.5B/b1/nf4: decode speed", timeout=10)
        # 80x24 shows the first rows; the noisy NF4 row is named by the warning under them.
        assert fp16[0] in text and int8[3] in text, text
        assert "completed" in text and "Results 3/3" in text and "Qwen2-1.5B/b1/nf4: decode speed" in text, text
        pane.keys("q")
        assert _wait_dead(pane), pane.text()
    finally:
        pane.close()
