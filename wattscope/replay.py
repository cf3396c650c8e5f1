"""Play a recording's event stream into a RunState on a clock.

The controller keeps a cursor into ``recording.events(start_ns)`` and applies every
event up to the replay position, so the first frame of an hour-long recording costs a
few rows, not the whole file. Seeking backward (or far forward) rebuilds the state from
the non-sample events up to the target plus only the samples the display needs (the
graph window, and the current phase for its running mean), never an hour of samples.

The position is the stream's clock: ``snapshot()`` is ``state.snapshot(position)``, so a
replay at T shows what the live run showed at T.

A recording is anything with ``meta`` and ``events(start_ns=None, end_ns=None)``
yielding events in time order (``wattscope.load`` gives one; ``MemoryRecording`` holds a
list). If its ``events`` also takes ``samples=False``, rebuilding skips sample rows in
the database instead of filtering them here.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Callable, Iterable, Iterator

from wattscope import events as ev
from wattscope.state import RunState, Snapshot

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
SEEK_S = 10.0
# How far back before a seek target samples are refolded for the current phase's
# running mean; phases are seconds to minutes long, so this bounds the cost of a seek.
PHASE_REFOLD_MAX_S = 600.0


class MemoryRecording:
    """A recording held in memory: a time-ordered list of events."""

    def __init__(self, events: Iterable[ev.Event], path: str | None = None) -> None:
        self._events = sorted(events, key=lambda e: e.t_ns)
        first = self._events[0] if self._events else None
        self.meta: dict[str, Any] = dict(first.meta) if isinstance(first, ev.RunStarted) else {}
        self.path = path

    def events(
        self, start_ns: int | None = None, end_ns: int | None = None, samples: bool = True
    ) -> Iterator[ev.Event]:
        for e in self._events:
            if start_ns is not None and e.t_ns < start_ns:
                continue
            if end_ns is not None and e.t_ns > end_ns:
                break
            if samples or not isinstance(e, ev.Samples):
                yield e


def _takes_samples_flag(recording: Any) -> bool:
    try:
        return "samples" in inspect.signature(recording.events).parameters
    except (TypeError, ValueError):
        return False


class ReplayController:
    """A replay as a ``RunSource`` whose ``controls`` are itself (``ReplayControls``).

    Thread-safe: a worker thread calls ``advance()``, the UI calls the controls and
    ``snapshot()``. ``clock`` returns wall-clock ns (injectable so tests freeze it)."""

    def __init__(
        self,
        recording: Any,
        clock: Callable[[], int] = ev.now_ns,
        window_s: float = 60.0,
        speed: float = 1.0,
    ) -> None:
        self.recording = recording
        self.path: str | None = getattr(recording, "path", None)
        self._clock = clock
        self._window_s = window_s
        self._lock = threading.RLock()
        self._skip_samples = _takes_samples_flag(recording)
        self._index: list[ev.Event] | None = None  # non-sample events, loaded on demand
        self._speed = speed
        self._playing = True
        self._start_ns: int | None = None
        self._end_ns: int | None = None
        self._reset_cursor(None)
        # Position starts at the first event; a wall-clock anchor maps clock -> position.
        self._peek()
        self._pos = self._start_ns if self._start_ns is not None else 0
        self._anchor_wall = clock()
        self._anchor_pos = self._pos
        self._applied_to = self._pos
        self._apply_due()

    # ------------------------------------------------------------------ stream

    def _reset_cursor(self, start_ns: int | None) -> None:
        self.state = RunState(window_s=self._window_s)
        self._it = iter(self.recording.events(start_ns=start_ns))
        self._next: ev.Event | None = None
        self._exhausted = False
        self._last_t = start_ns or 0

    def _peek(self) -> ev.Event | None:
        if self._next is None and not self._exhausted:
            self._next = next(self._it, None)
            if self._next is None:
                self._exhausted = True
            elif self._start_ns is None:
                self._start_ns = self._next.t_ns
        return self._next

    def _apply_due(self) -> None:
        while (e := self._peek()) is not None and e.t_ns <= self._pos:
            self.state.apply(e)
            self._last_t = e.t_ns
            self._next = None
        self._applied_to = self._pos

    def _non_sample_events(self) -> list[ev.Event]:
        if self._index is None:
            if self._skip_samples:
                it = self.recording.events(samples=False)
            else:
                it = (e for e in self.recording.events() if not isinstance(e, ev.Samples))
            self._index = list(it)
        return self._index

    # ------------------------------------------------------------------ clock

    @property
    def start_ns(self) -> int:
        return self._start_ns or 0

    @property
    def end_ns(self) -> int:
        """The last event's time (known once the non-sample events are indexed, or
        once the cursor reached the end)."""
        if self._end_ns is None and hasattr(self.recording, "time_range"):
            self._end_ns = int(self.recording.time_range()[1])
        if self._end_ns is None:
            idx = self._non_sample_events()
            last = idx[-1].t_ns if idx else self.start_ns
            self._end_ns = max(last, self._pos)
        return self._end_ns

    @property
    def position_ns(self) -> int:
        with self._lock:
            return self._applied_to

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._exhausted and self._next is None and self._pos >= self.end_ns

    def _target(self) -> int:
        if not self._playing:
            return self._pos
        wall = self._clock() - self._anchor_wall
        return self._anchor_pos + int(wall * self._speed)

    def _rebase(self) -> None:
        self._anchor_wall = self._clock()
        self._anchor_pos = self._pos

    def advance(self) -> None:
        """Apply everything up to where the clock says the replay is."""
        with self._lock:
            target = self._target()
            if target <= self._pos:
                return
            self._pos = target
            self._apply_due()
            if self._exhausted and self._next is None:
                self._end_ns = max(self._last_t, self._end_ns or 0)
                if self._pos >= self._end_ns:
                    self._pos = self._applied_to = self._end_ns
                    self._playing = False

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self.state.snapshot(self._applied_to)

    # ------------------------------------------------------------------ as a source

    @property
    def controls(self) -> ReplayController:
        return self

    @property
    def done(self) -> bool:
        return self.finished

    @property
    def running(self) -> bool:
        return False  # the recorded run is over; nothing to stop

    @property
    def status(self) -> str:
        return self.snapshot().status

    def stop(self) -> None:
        self.pause()

    def wait(self, timeout: float | None = None) -> bool:
        """A replay moves only when its caller advances it, so there is nothing to wait
        for: whether it has played to the end."""
        return self.finished

    # ------------------------------------------------------------------ controls

    def play(self) -> None:
        with self._lock:
            if not self._playing:
                if self._pos >= self.end_ns:
                    self._seek_locked(self.start_ns)
                self._playing = True
                self._rebase()

    def pause(self) -> None:
        with self._lock:
            if self._playing:
                self.advance()
                self._playing = False

    def toggle(self) -> None:
        if self._playing:
            self.pause()
        else:
            self.play()

    def set_speed(self, speed: float) -> None:
        with self._lock:
            self.advance()
            self._speed = min(SPEEDS[-1], max(SPEEDS[0], speed))
            self._rebase()

    def faster(self) -> None:
        self.set_speed(next((s for s in SPEEDS if s > self._speed), SPEEDS[-1]))

    def slower(self) -> None:
        self.set_speed(next((s for s in reversed(SPEEDS) if s < self._speed), SPEEDS[0]))

    def seek(self, delta_s: float) -> None:
        with self._lock:
            self.advance()
            self._seek_locked(self._pos + int(delta_s * 1e9))

    def seek_to(self, t_ns: int) -> None:
        with self._lock:
            self._seek_locked(t_ns)

    def to_start(self) -> None:
        self.seek_to(self.start_ns)

    def to_end(self) -> None:
        self.seek_to(self.end_ns)

    def _seek_locked(self, t_ns: int) -> None:
        t_ns = min(max(t_ns, self.start_ns), self.end_ns)
        near = int(self._window_s * 1e9)
        if self._pos <= t_ns <= self._pos + near:
            self._pos = t_ns  # a short step forward: just keep folding
            self._apply_due()
        else:
            self._rebuild(t_ns)
        self._rebase()

    def _rebuild(self, t_ns: int) -> None:
        """State at ``t_ns`` from the non-sample events up to it plus the samples of the
        graph window (and of the current phase, for its running mean)."""
        idx = self._non_sample_events()
        phase_start = next(
            (e.t_ns for e in reversed(idx) if e.t_ns <= t_ns and isinstance(e, ev.PhaseStarted)),
            t_ns,
        )
        lo = min(t_ns - int(self._window_s * 1e9), phase_start)
        lo = max(lo, t_ns - int(PHASE_REFOLD_MAX_S * 1e9))
        self._reset_cursor(lo)
        head = [e for e in idx if e.t_ns < lo]
        for e in head:
            self.state.apply(e)
        self._pos = t_ns
        self._apply_due()

    # ------------------------------------------------------------------ fast

    def run_fast(self, on_event: Callable[[ev.Event, RunState], None] | None = None) -> Snapshot:
        """Feed everything left as fast as possible; ``on_event`` sees each non-sample
        event after it was applied (a printer uses it to report progress)."""
        with self._lock:
            while (e := self._peek()) is not None:
                self.state.apply(e)
                self._next = None
                self._pos = max(self._pos, e.t_ns)
                if on_event is not None and not isinstance(e, ev.Samples):
                    on_event(e, self.state)
            self._applied_to = self._pos
            self._end_ns = self._pos
            self._playing = False
            return self.state.snapshot(self._pos)


# --------------------------------------------------------------------------- synthetic

# The seed study's table (RTX PRO 6000): (prefill J/call, decode J/32 tok, decode tok/s,
# prefill W, decode W) per model, batch and precision. A synthetic run replays these so
# its ratio table can be checked against the seed's.
SEED_FIGURES: dict[tuple[str, int, str], tuple[float, float, float, float, float]] = {
    ("Qwen2-1.5B", 1, "fp16"): (0.924, 42.737, 105.26, 92.0, 141.0),
    ("Qwen2-1.5B", 1, "int8"): (4.736, 135.724, 15.79, 67.0, 67.0),
    ("Qwen2-1.5B", 1, "nf4"): (3.569, 71.281, 41.10, 114.0, 92.0),
    ("Qwen2-1.5B", 8, "fp16"): (1.326, 48.156, 789.97, 160.0, 190.0),
    ("Qwen2-1.5B", 8, "int8"): (5.829, 154.507, 112.77, 80.0, 75.0),
    ("Qwen2-1.5B", 8, "nf4"): (4.511, 133.460, 244.35, 200.0, 210.0),
    ("Qwen2.5-3B", 1, "fp16"): (1.575, 73.191, 80.74, 120.0, 180.0),
    ("Qwen2.5-3B", 1, "int8"): (6.620, 186.035, 12.30, 75.0, 70.0),
    ("Qwen2.5-3B", 1, "nf4"): (6.412, 108.622, 31.71, 150.0, 110.0),
    ("Qwen2.5-3B", 8, "fp16"): (2.423, 81.280, 636.22, 210.0, 240.0),
    ("Qwen2.5-3B", 8, "int8"): (8.364, 212.776, 86.55, 95.0, 80.0),
    ("Qwen2.5-3B", 8, "nf4"): (7.886, 234.826, 188.79, 280.0, 300.0),
    ("Yi-1.5-6B", 8, "fp16"): (3.645, 116.080, 617.32, 247.0, 280.0),
    ("Yi-1.5-6B", 8, "int8"): (9.124, 218.745, 99.99, 109.0, 85.0),
    ("Yi-1.5-6B", 8, "nf4"): (12.126, 365.331, 222.80, 326.0, 318.0),
}
IDLE_W = 60.0


def synthetic_run(
    configs: Iterable[tuple[str, int, str]] = (
        ("Qwen2-1.5B", 1, "fp16"),
        ("Qwen2-1.5B", 1, "int8"),
        ("Qwen2-1.5B", 1, "nf4"),
    ),
    t0_ns: int = 1_000_000_000_000,
    rate_hz: float = 100.0,
    phase_s: float = 1.0,
    repeats: int = 3,
    tdp_w: float = 700.0,
    gpu_name: str = "NVIDIA H100 80GB HBM3",
    failures: dict[str, str] | None = None,
    noisy: Iterable[str] = ("Qwen2-1.5B/b1/nf4",),
    end: str | None = "completed",
    stop_after: int | None = None,
) -> list[ev.Event]:
    """A plausible run as an event list in time order: idle baseline, then per config
    load, warm-up, R prefill and R decode windows, cool-down, the runner's
    ConfigFinished and the session's ConfigResult (figures from SEED_FIGURES), sample
    batches every 100 ms, SamplerStats every second. ``failures`` maps config ids to a
    reason; configs in ``noisy`` get a decode tok/s CV of 4.5 %. ``stop_after`` ends the
    stream (without RunEnded) after that many configs, as a crash would. Deterministic."""
    failures = failures or {}
    noisy = set(noisy)
    configs = list(configs)
    cfg_ids = [f"{m}/b{b}/{p}" for m, b, p in configs]
    meta = {
        "schema_version": ev.SCHEMA_VERSION,
        "gpu": {"name": gpu_name, "index": 0, "tdp_w": tdp_w, "refresh_s": {"power_w": 0.1}},
        "simulated": True,
        "weights": "synthetic",
        "sweep": {
            "name": "synthetic-seed",
            "configs": [{"config_id": c, "model": f"synthetic:{m}", "batch": b, "precision": p}
                        for c, (m, b, p) in zip(cfg_ids, configs)],
        },
    }
    out: list[ev.Event] = [ev.RunStarted(t0_ns, meta)]
    # (start_ns, end_ns, watts) segments the sample generator turns into rows.
    segments: list[tuple[int, int, float]] = []
    step = int(phase_s * 1e9)
    t = t0_ns

    def phase(config_id: str | None, name: str, watts: float, repeat: int | None = None,
              length: int = step) -> tuple[int, int]:
        nonlocal t
        out.append(ev.PhaseStarted(t, config_id, name, repeat))
        segments.append((t, t + length, watts))
        start, t = t, t + length
        return start, t

    energy = 0.0
    a, b_ = phase(None, "idle", IDLE_W)
    out.append(ev.Window(b_, None, "idle", "idle", 1, a, b_, 0.0, IDLE_W * phase_s, 0, 0, 0))
    energy += IDLE_W * phase_s
    for i, ((model, batch, prec), cid) in enumerate(zip(configs, cfg_ids)):
        if stop_after is not None and i >= stop_after:
            break
        pre_j, dec_j, tok_s, pre_w, dec_w = SEED_FIGURES.get((model, batch, prec), (1.0, 50.0, 100.0, 150.0, 200.0))
        out.append(ev.ConfigStarted(t, cid, i, len(configs), f"synthetic:{model}", batch, prec, True, repeats))
        phase(cid, "load", 90.0)
        if cid in failures:
            out.append(ev.RunWarning(t, "runner", f"{cid}: {failures[cid]}", cid))
            out.append(ev.ConfigFinished(t, cid, False, failures[cid]))
            out.append(ev.ConfigResult(t, cid, f"synthetic:{model}", batch, prec, True, False, failures[cid], {}))
            continue
        phase(cid, "warmup", dec_w)
        for name, watts in (("prefill", pre_w), ("decode", dec_w)):
            for r in range(1, repeats + 1):
                a, b_ = phase(cid, name, watts, r)
                e0, energy = energy, energy + watts * phase_s
                out.append(ev.Window(b_, cid, name, "measure", r, a, b_, e0, energy, 5, 32 if name == "decode" else 0, batch * 32 * 5))
        phase(cid, "cooldown", IDLE_W, length=step // 2)
        out.append(ev.ConfigFinished(t, cid, True))
        figures = {
            "prefill_energy_j": pre_j, "decode_energy_j": dec_j, "decode_tok_s": tok_s,
            "prefill_power_w": pre_w, "decode_power_w": dec_w,
            "prefill_energy_cv": 0.01, "decode_energy_cv": 0.012,
            "decode_tok_s_cv": 0.045 if cid in noisy else 0.008, "decode_steps": 32.0,
        }
        out.append(ev.ConfigResult(t, cid, f"synthetic:{model}", batch, prec, True, True, "", figures))
    t_end = t
    out.extend(_sample_events(segments, rate_hz, t0_ns, t_end))
    if end is not None and stop_after is None:
        out.append(ev.RunEnded(t_end + 1, end))
    out.sort(key=lambda e: e.t_ns)  # stable: an event precedes the samples sent with it
    return out


def _sample_events(segments: list[tuple[int, int, float]], rate_hz: float, t0: int, t_end: int) -> list[ev.Event]:
    """Rows at ``rate_hz``, power refreshed every 100 ms like an H100 (held between
    refreshes, with a small deterministic ripple), sent in batches every 100 ms."""
    dt = int(1e9 / rate_hz)
    refresh = 100_000_000
    batch_ns = 100_000_000
    out: list[ev.Event] = []
    rows: list[tuple] = []
    seg = 0
    energy = 0.0
    next_send = t0 + batch_ns
    prev = None
    for k, ts in enumerate(range(t0, t_end, dt)):
        while seg + 1 < len(segments) and ts >= segments[seg][1]:
            seg += 1
        held = ts - (ts - t0) % refresh
        n = (held - t0) // refresh
        watts = segments[seg][2] * (1.0 + 0.02 * ((n * 7919) % 11 - 5) / 5)
        energy += watts * dt / 1e9
        fresh = ev.FRESH_POWER if watts != prev else 0
        prev = watts
        read_energy = k % max(1, int(rate_hz / 10)) == 0
        rows.append((ts, 0, watts, watts, energy if read_energy else float("nan"), 1755.0, 90.0, 55.0, 20000.0,
                     fresh | (ev.FRESH_ENERGY if read_energy else 0)))
        if ts + dt >= next_send:
            out.append(ev.Samples(next_send, rows))
            rows = []
            next_send += batch_ns
    if rows:
        out.append(ev.Samples(next_send, rows))
    for s in range(t0 + 1_000_000_000, t_end + 1, 1_000_000_000):
        out.append(ev.SamplerStats(s, rate_hz, rate_hz * 0.998, 0.4, 0, {"power_w": 10.0, "power_avg_w": 10.0, "energy_j": 10.0}, 2.5))
    return out
