"""The headless printer: progress lines for logs, a Live panel on terminals, the table."""

from __future__ import annotations

import io
import threading

from rich.console import Console

from wattscope import events as ev
from wattscope.headless import ProgressPrinter, live_panel, run_headless, run_live
from wattscope.render import snapshot_markdown
from wattscope.replay import MemoryRecording, ReplayController, synthetic_run
from wattscope.state import RunState

CONFIGS = [("Qwen2-1.5B", 1, "fp16"), ("Qwen2-1.5B", 1, "int8"), ("Qwen2-1.5B", 8, "int8")]
FAIL = {"Qwen2-1.5B/b8/int8": "CUDA out of memory"}


def _events() -> list[ev.Event]:
    return synthetic_run(configs=CONFIGS, failures=FAIL)


def test_replay_prints_one_line_per_phase_and_result_then_the_table() -> None:
    out = io.StringIO()
    snap = run_headless(ReplayController(MemoryRecording(_events())), out, tty=False)
    text = out.getvalue()
    lines = text.splitlines()
    phases = [line for line in lines if "] phase " in line]
    # idle, then per finished config load, warm-up, 3 prefill, 3 decode, cool-down; the
    # failed one only loads.
    assert len(phases) == 1 + 2 * 9 + 1
    assert "phase decode r2 Qwen2-1.5B/b1/int8" in text
    assert ("result Qwen2-1.5B b1 INT8: prefill 4.736 J (5.13x), decode 135.724 J/32 tok (3.18x), "
            "15.79 tok/s (0.15x)") in text
    assert "FAILED Qwen2-1.5B b8 INT8: CUDA out of memory" in text
    assert lines[0].endswith("run started: NVIDIA H100 80GB HBM3 (simulated), TDP 700 W, synthetic weights")
    # The final Markdown table: seed columns, ratios, %TDP.
    assert "| Qwen2-1.5B | 1 | INT8 | 4.736 | 135.724 | 15.79 | 5.13x | 3.18x | 0.15x | 10% | 10% |" in text
    assert "failed Qwen2-1.5B b8 INT8: CUDA out of memory" in text
    assert snap.status == "completed"
    # Time order: the INT8 result after its own decode phases.
    assert text.index("phase cool-down Qwen2-1.5B/b1/int8") < text.index("result Qwen2-1.5B b1 INT8")


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

    out = io.StringIO()
    status = run_live(FakeSession(), out)
    assert status == "completed"
    assert "result Qwen2-1.5B b1 INT8" in out.getvalue()
    assert "| Qwen2-1.5B | 1 | FP16 | 0.924 |" in out.getvalue()


def test_live_panel_shows_power_tdp_phase_and_table() -> None:
    events = _events()
    state = RunState()
    t = events[0].t_ns + 15_200_000_000  # inside the INT8 decode, first repeat
    state.apply_all(e for e in events if e.t_ns <= t)
    snap = state.snapshot(t)
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    console.print(live_panel(snap, 100))
    text = console.export_text()
    assert "NVIDIA H100 80GB HBM3" in text
    assert "config 2/3: Qwen2-1.5B b1 INT8 (synthetic)   phase decode round 1 (0.7 s)" in text
    watts = snap.gpu.latest_w
    assert 65 < watts < 69  # the synthetic INT8 decode draws 67 W (+-2 % ripple)
    assert f"GPU0 {watts:4.0f} W" in text and f"{100 * watts / 700:.0f}% TDP" in text
    assert any("Qwen2-1.5B 1 FP16 0.924 42.737 105.26 1.00x" in " ".join(line.split()) for line in text.splitlines())


def test_progress_line_names_the_decode_steps_of_the_row() -> None:
    events = synthetic_run(configs=[("Qwen2-1.5B", 1, "fp16")])
    events = [e if not isinstance(e, ev.ConfigResult)
              else ev.ConfigResult(e.t_ns, e.config_id, e.model, e.batch, e.precision, e.synthetic, e.ok, e.reason,
                                   {**e.figures, "decode_steps": 64.0})
              for e in events]
    state = RunState()
    state.apply_all(events)
    out = io.StringIO()
    ProgressPrinter(out).update(state.snapshot(events[-1].t_ns))
    assert "decode 42.737 J/64 tok (1.00x)" in out.getvalue()
    assert "| Decode Energy / 64 tok (J) |" in snapshot_markdown(state.snapshot(events[-1].t_ns))
