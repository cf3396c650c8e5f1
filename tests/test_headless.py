"""The headless printer: progress lines for logs, a Live panel on terminals, the table."""

from __future__ import annotations

import io
import threading

import pytest
from rich.console import Console

from wattscope import events as ev
from wattscope import render
from wattscope.headless import ProgressPrinter, live_panel, run_headless, run_live
from wattscope.render import snapshot_markdown
from wattscope.replay import MemoryRecording, ReplayController
from wattscope.state import RunState

from synthetic_run import STREAM_IDLE_W, event_stream, result_cells, result_of

CONFIGS = [("Qwen2-1.5B", 1, "fp16"), ("Qwen2-1.5B", 1, "int8"), ("Qwen2-1.5B", 8, "int8")]
FAIL = {"Qwen2-1.5B/b8/int8": "CUDA out of memory"}


def _events() -> list[ev.Event]:
    return event_stream(configs=CONFIGS, failures=FAIL)


def test_replay_prints_one_line_per_phase_and_result_then_the_table() -> None:
    events = _events()
    out = io.StringIO()
    snap = run_headless(ReplayController(MemoryRecording(events)), out, tty=False)
    text = out.getvalue()
    lines = text.splitlines()
    phases = [line for line in lines if "] phase " in line]
    assert len(phases) == sum(isinstance(e, ev.PhaseStarted) for e in events)
    assert "phase decode r2 Qwen2-1.5B/b1/int8" in text
    f = result_of(events, "Qwen2-1.5B/b1/int8").figures
    prefill, decode, tok_s, *ratios = result_cells(events, "Qwen2-1.5B/b1/int8", "|").split("|")
    assert (f"result Qwen2-1.5B b1 INT8: prefill {prefill} J ({ratios[0]}), decode {decode} J/32 tok ({ratios[1]}), "
            f"{tok_s} tok/s ({ratios[2]})") in text
    assert "FAILED Qwen2-1.5B b8 INT8: CUDA out of memory" in text
    assert lines[0].endswith("run started: NVIDIA H100 80GB HBM3 (simulated), TDP 700 W, synthetic weights")
    # The final Markdown table: seed columns, ratios, %TDP of the result's powers.
    tdp = [render.fmt_percent(100 * f[n] / 700) for n in ("prefill_power_w", "decode_power_w")]
    cells = result_cells(events, "Qwen2-1.5B/b1/int8", " | ")
    assert f"| Qwen2-1.5B | 1 | INT8 | {cells} | {tdp[0]} | {tdp[1]} |" in text
    assert "failed Qwen2-1.5B b8 INT8: CUDA out of memory" in text
    assert snap.status == "completed"
    # Time order: the INT8 result after its group's last round and cool-down.
    assert text.index("phase decode r3 Qwen2-1.5B/b1/int8") < text.index("phase cool-down") \
        < text.index("result Qwen2-1.5B b1 INT8")


def test_printer_prints_each_thing_once_across_polls() -> None:
    events = _events()
    state = RunState()
    out = io.StringIO()
    printer = ProgressPrinter(out)
    # Poll every 2 s of run time, as a 2 Hz printer would see a 4x stream.
    t = events[0].t_ns
    i = 0
    while i < len(events):
        t += 2_000_000_000
        while i < len(events) and events[i].t_ns <= t:
            state.apply(events[i])
            i += 1
        printer.update(state.snapshot(t))
    text = out.getvalue()
    assert text.count("result Qwen2-1.5B b1 FP16") == 1
    assert text.count("phase prefill r1 Qwen2-1.5B/b1/fp16") == 1
    assert text.count("run completed") == 1
    assert text.count("warning [runner]") == 1


def test_live_session_progress_and_status() -> None:
    events = _events()

    class FakeSession:
        """Feeds the events from a thread, like the session's reader."""

        def __init__(self) -> None:
            self.state = RunState()
            self.status = "starting"
            self.done = threading.Event()
            self.error = None

        def start(self) -> None:
            self.status = "running"
            threading.Thread(target=self._feed, daemon=True).start()

        def _feed(self) -> None:
            self.state.apply_all(events)
            self.status = "completed"
            self.done.set()

        def stop(self) -> None:
            pass

        def wait(self, timeout: float | None = None) -> bool:
            return self.done.wait(timeout)

    out = io.StringIO()
    status = run_live(FakeSession(), out)
    assert status == "completed"
    assert "result Qwen2-1.5B b1 INT8" in out.getvalue()
    assert f"| Qwen2-1.5B | 1 | FP16 | {result_cells(events, 'Qwen2-1.5B/b1/fp16', ' | ')} |" in out.getvalue()


def test_live_panel_shows_power_tdp_phase_and_table() -> None:
    events = _events()
    state = RunState()
    # 0.7 s into the INT8 decode window of the first round
    decode = next(e for e in events if isinstance(e, ev.Window) and e.config_id == "Qwen2-1.5B/b1/int8"
                  and e.phase == "decode" and e.round == 1)
    t = decode.start_ns + 700_000_000
    state.apply_all(e for e in events if e.t_ns <= t)
    snap = state.snapshot(t)
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    console.print(live_panel(snap, 100))
    text = console.export_text()
    assert "NVIDIA H100 80GB HBM3" in text
    assert "config 2/3: Qwen2-1.5B b1 INT8 (synthetic)   phase decode round 1 (0.7 s)" in text
    watts = snap.gpu.latest_w
    drawn = (decode.energy_j - STREAM_IDLE_W * decode.tail_s) / decode.work_s  # the window's work power
    assert watts == pytest.approx(drawn, rel=0.021)  # the samples ripple by +-2 %
    assert f"GPU0 {watts:4.0f} W" in text and f"{100 * watts / 700:.0f}% TDP" in text
    # A group's rows come when its rounds are over: none yet, the FP16 row once it finished.
    fp16 = f"Qwen2-1.5B 1 FP16 {result_cells(events, 'Qwen2-1.5B/b1/fp16')}"
    assert not any("Qwen2-1.5B 1 FP16" in " ".join(line.split()) for line in text.splitlines())
    done = result_of(events, "Qwen2-1.5B/b1/fp16").t_ns
    state.apply_all(e for e in events if t < e.t_ns <= done)
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    console.print(live_panel(state.snapshot(done), 100))
    assert any(fp16 in " ".join(line.split()) for line in console.export_text().splitlines())


def test_progress_line_names_the_decode_steps_of_the_row() -> None:
    events = event_stream(configs=[("Qwen2-1.5B", 1, "fp16")])
    events = [e if not isinstance(e, ev.ConfigResult)
              else ev.ConfigResult(e.t_ns, e.config_id, e.model, e.batch, e.precision, e.synthetic, e.ok, e.reason,
                                   {**e.figures, "decode_steps": 64.0})
              for e in events]
    state = RunState()
    state.apply_all(events)
    out = io.StringIO()
    ProgressPrinter(out).update(state.snapshot(events[-1].t_ns))
    decode = render.fmt_figure("decode_energy_j", result_of(events, "Qwen2-1.5B/b1/fp16").figures["decode_energy_j"])
    assert f"decode {decode} J/64 tok (1.00x)" in out.getvalue()
    assert "| Decode Energy / 64 tok (J) |" in snapshot_markdown(state.snapshot(events[-1].t_ns))
