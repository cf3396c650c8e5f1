"""Where things happened in time: the phase spans of a run and its wall-clock anchor.

One rule places every sample, plot band and trace slice: a phase runs from its
``PhaseStarted`` to the next one (the last to the end of the run), and a sample belongs
to the phase whose start is the latest at or before its timestamp (samples before the
first phase belong to none). The configuration of a span is the one its ``PhaseStarted``
names (``None`` for the group-level idle, warm-up and cool-down phases).

Timestamps are CLOCK_MONOTONIC ns (``events.now_ns``). ``WallClock`` turns them into
Unix time: recordings made since the anchor existed carry ``clock_anchor`` in their meta
(Unix ns read next to a monotonic ns); older ones only say when they were ``created``
(to the second, read just before ``RunStarted``), so their anchor is approximate and
says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from wattscope import events as ev
from wattscope.metrics import RunMeta


@dataclass(frozen=True)
class Span:
    """One phase of the run: [start_ns, end_ns), the configuration it names, its round."""

    start_ns: int
    end_ns: int
    phase: str
    config_id: str | None
    repeat: int | None = None


@dataclass(frozen=True)
class ConfigSpan:
    """A configuration from its ``ConfigStarted`` to its ``ConfigFinished`` (or the run's end)."""

    config_id: str
    start_ns: int
    end_ns: int
    model: str
    batch: int
    precision: str
    engine: str
    group: str | None


@dataclass(frozen=True)
class Timeline:
    """A run's time structure, read from its event stream."""

    start_ns: int  # RunStarted (or the first event)
    end_ns: int  # RunEnded (or the last event)
    phases: tuple[Span, ...]
    configs: tuple[ConfigSpan, ...]
    warnings: tuple[ev.RunWarning, ...]

    def phase_index(self, t_ns: np.ndarray) -> np.ndarray:
        """For each time, the index into ``phases`` of the phase it falls in; -1 before
        the first phase."""
        starts = np.fromiter((s.start_ns for s in self.phases), dtype=np.int64, count=len(self.phases))
        return phase_at(starts, t_ns)

    def label(self, t_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(config_id, phase) of each time by the rule above, as object arrays; None where
        it has none."""
        idx = self.phase_index(t_ns)
        # Index -1 (before the first phase) picks the trailing None.
        configs = np.array([*(s.config_id for s in self.phases), None], dtype=object)
        phases = np.array([*(s.phase for s in self.phases), None], dtype=object)
        return configs[idx], phases[idx]


def phase_at(starts_ns: np.ndarray, t_ns: Any) -> np.ndarray:
    """The rule every surface places a sample by: a time falls in the latest phase started
    at or before it. For each time, the index into ``starts_ns`` (sorted); -1 before the
    first phase."""
    return np.searchsorted(starts_ns, np.asarray(t_ns, dtype=np.int64), side="right") - 1


def timeline(events: Iterable[ev.Event]) -> Timeline:
    """The Timeline of an event stream in time order (samples may be left out)."""
    marks: list[ev.PhaseStarted] = []
    started: dict[str, ev.ConfigStarted] = {}
    finished: dict[str, int] = {}
    warnings: list[ev.RunWarning] = []
    first: int | None = None
    last = 0
    run_start: int | None = None
    run_end: int | None = None
    for e in events:
        first = e.t_ns if first is None else first
        last = max(last, e.t_ns)
        if isinstance(e, ev.RunStarted):
            run_start = e.t_ns
        elif isinstance(e, ev.PhaseStarted):
            marks.append(e)
        elif isinstance(e, ev.ConfigStarted):
            started.setdefault(e.config_id, e)
        elif isinstance(e, ev.ConfigFinished):
            finished.setdefault(e.config_id, e.t_ns)
        elif isinstance(e, ev.RunWarning):
            warnings.append(e)
        elif isinstance(e, ev.RunEnded) and run_end is None:
            run_end = e.t_ns
    start = run_start if run_start is not None else (first or 0)
    end = max(run_end if run_end is not None else last, start)
    marks.sort(key=lambda m: m.t_ns)
    ends = [m.t_ns for m in marks[1:]] + [end]
    phases = tuple(Span(m.t_ns, max(m.t_ns, e), m.phase, m.config_id, m.repeat) for m, e in zip(marks, ends))
    configs = tuple(
        ConfigSpan(s.config_id, s.t_ns, max(s.t_ns, finished.get(s.config_id, end)), s.model, s.batch,
                   s.precision, s.engine, s.group)
        for s in started.values()
    )
    return Timeline(start, end, phases, configs, tuple(warnings))


def of_recording(recording: Any) -> Timeline:
    """The Timeline of a ``wattscope.load`` recording (read without its samples)."""
    return timeline(recording.events(samples=False))


# ------------------------------------------------------------------------ wall clock


@dataclass(frozen=True)
class WallClock:
    """Unix time ``unix_ns`` was read at monotonic time ``monotonic_ns``. ``exact`` is
    False where it was reconstructed from the meta's ``created`` (1 s resolution)."""

    unix_ns: int
    monotonic_ns: int
    exact: bool

    def unix(self, t_ns: np.ndarray) -> np.ndarray:
        """Unix ns of monotonic ns (int64; exact integer arithmetic)."""
        return np.asarray(t_ns, dtype=np.int64) + np.int64(self.unix_ns - self.monotonic_ns)

    def to_meta(self) -> dict[str, Any]:
        return {"unix_ns": self.unix_ns, "monotonic_ns": self.monotonic_ns, "exact": self.exact}


def wall_clock(run: RunMeta, run_started_ns: int | None) -> WallClock | None:
    """The run's anchor: the recorded one, else ``created`` taken to be the time of
    ``RunStarted`` (approximate), else None."""
    if run.clock_anchor is not None:
        unix_ns, mono_ns = run.clock_anchor
        return WallClock(unix_ns, mono_ns, True)
    if not run.created or run_started_ns is None:
        return None
    try:
        created = datetime.fromisoformat(run.created)
    except ValueError:
        return None
    if created.tzinfo is None:
        return None  # local time of an unknown zone: no anchor rather than a wrong one
    seconds = created.timestamp()
    return WallClock(int(seconds) * 1_000_000_000, run_started_ns, False) if math.isfinite(seconds) else None
