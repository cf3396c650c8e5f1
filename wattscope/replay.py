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
        new_state: Callable[[float], RunState] = RunState,
        refold_all: bool = False,
    ) -> None:
        # ``new_state(window_s)`` makes the state the stream is folded into; a state whose
        # figures need the whole stream so far (a serving run's) asks for ``refold_all``:
        # a seek then folds everything up to the target, samples included.
        self._new_state = new_state
        self._refold_all = refold_all
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
        self.state = self._new_state(self._window_s)
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
        if self._refold_all:
            self._reset_cursor(None)
            self._pos = t_ns
            self._apply_due()
            return
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

