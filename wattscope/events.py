"""The event vocabulary: everything a run says, live or replayed.

A run is a time-ordered stream of these events. The live session produces them from
the sampler and runner processes; a recording replays the same events; the recorder,
the run state (TUI and headless), and the analysis all consume them. Every event is a
frozen dataclass that round-trips through a plain dict (``to_dict``/``from_dict``) so it
can cross a process boundary and be stored as JSON.

All timestamps are CLOCK_MONOTONIC nanoseconds (``now_ns``), comparable across the
processes of one machine.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

SCHEMA_VERSION = 1

# Phases of a run, in the order a configuration goes through them.
PHASES = ("idle", "load", "warmup", "prefill", "decode", "cooldown")
# A window's role: "measure" windows enter results; "warmup" windows only decide when
# the card is steady; "idle" windows give the idle baseline.
ROLES = ("measure", "warmup", "idle")

# Column order of a sample row (see Samples). Energy is NaN on rows where the counter
# was not read (it is read at a lower rate than power because it is slow on Hopper).
SAMPLE_COLUMNS = (
    "t_ns",
    "gpu",
    "power_w",
    "power_avg_w",
    "energy_j",
    "sm_clock_mhz",
    "util_pct",
    "temp_c",
    "mem_used_mib",
    "fresh",
)
# Bits of the ``fresh`` column: set when that signal's value differs from the previous
# sample's, i.e. the sensor really refreshed between the two reads.
FRESH_POWER = 1
FRESH_POWER_AVG = 2
FRESH_ENERGY = 4


def now_ns() -> int:
    """The one clock every wattscope process stamps events with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


_REGISTRY: dict[str, type[Event]] = {}


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = ""
    t_ns: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["kind"] = self.kind
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Event:
        d = dict(d)
        cls = _REGISTRY[d.pop("kind")]
        if cls is Samples:
            d["rows"] = [tuple(r) for r in d["rows"]]
        if cls is Window and "energy_parts_j" in d:
            d["energy_parts_j"] = tuple(d["energy_parts_j"])
        return cls(**d)


@dataclass(frozen=True)
class RunStarted(Event):
    """First event of a run. ``meta`` is self-describing: schema version, host,
    package versions, GPU facts (name, uuid, driver, power limits, signals and their
    measured refresh periods, absent signals with reasons), sampler settings, the sweep
    config (as given and as parsed), and whether weights/GPU are synthetic/simulated."""

    kind: ClassVar[str] = "run_started"
    meta: dict[str, Any]


@dataclass(frozen=True)
class Samples(Event):
    """A batch of sampler rows, each a tuple in SAMPLE_COLUMNS order. ``t_ns`` is the
    time the batch was sent."""

    kind: ClassVar[str] = "samples"
    rows: list[tuple] = field(default_factory=list)


@dataclass(frozen=True)
class SamplerStats(Event):
    """Periodic health of the sampler over the last reporting interval."""

    kind: ClassVar[str] = "sampler_stats"
    target_hz: float
    achieved_hz: float
    jitter_p99_ms: float
    drops: int  # ticks missed because a read overran its slot
    distinct_per_s: dict[str, float]  # per signal: how many fresh values per second
    cpu_pct: float  # sampler process CPU, % of one core


@dataclass(frozen=True)
class ConfigStarted(Event):
    """A configuration of the sweep begins (index counts from 0, of total)."""

    kind: ClassVar[str] = "config_started"
    config_id: str
    index: int
    total: int
    model: str
    batch: int
    precision: str
    synthetic: bool
    repeats: int  # measured rounds at least (protocol.min_rounds); more may follow
    engine: str = "eager"
    group: str | None = None  # the rows measured in the same interleaved rounds


@dataclass(frozen=True)
class PhaseStarted(Event):
    """The runner entered a phase (for the live display; windows carry the numbers)."""

    kind: ClassVar[str] = "phase_started"
    config_id: str | None
    phase: str
    repeat: int | None = None  # 1-based index of the measured round, if any


@dataclass(frozen=True)
class Window(Event):
    """A measured window. Both edges sit on an energy-counter update: the counter
    refreshes only every ~100 ms, so the runner synchronises the GPU and then waits for
    the counter to change, and the window runs from one update to another. The work
    starts right after the start edge and ends (GPU synchronised) at ``work_end_ns``;
    the end edge follows at the next counter update, <= one refresh later. Energy and
    power use [start_ns, end_ns]; latency and tok/s use [start_ns, work_end_ns].
    ``calls`` is the number of prefill calls or of decode runs inside; ``steps``
    decode steps per run (0 for prefill); ``tokens`` the tokens processed (prefill:
    batch*prompt*calls; decode: batch*steps*calls). ``t_ns`` equals ``end_ns``. With
    several GPUs the counter readings are the sum of theirs and ``energy_parts_j`` holds
    each GPU's energy over the window, in the run's GPU order (empty for one GPU)."""

    kind: ClassVar[str] = "window"
    config_id: str | None
    phase: str  # "prefill" | "decode" | "idle"
    role: str  # one of ROLES
    repeat: int  # 1-based within its phase and role
    start_ns: int
    end_ns: int
    energy_start_j: float
    energy_end_j: float
    calls: int
    steps: int
    tokens: int
    work_end_ns: int | None = None  # None: the work ran to end_ns (idle windows)
    # The interleaved round this window belongs to (1-based within its group and role;
    # None in recordings made before rounds existed) and the group it was measured in.
    round: int | None = None
    group: str | None = None
    energy_parts_j: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if not self.energy_parts_j:
            del d["energy_parts_j"]  # one GPU: recordings stay as they were before parts existed
        return d

    @property
    def tail_s(self) -> float:
        """Time from the end of the work to the counter update that closed the window."""
        return self.duration_s - self.work_s

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def work_s(self) -> float:
        end = self.end_ns if self.work_end_ns is None else self.work_end_ns
        return (end - self.start_ns) / 1e9

    @property
    def energy_j(self) -> float:
        return self.energy_end_j - self.energy_start_j


@dataclass(frozen=True)
class ConfigFinished(Event):
    """The runner is done with a configuration. On failure ``reason`` says why (out
    of memory, bitsandbytes missing, model failed to load...). ``info`` holds what the
    runner learned: bitsandbytes settings, versions, compute capability, load time."""

    kind: ClassVar[str] = "config_finished"
    config_id: str
    ok: bool
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConfigResult(Event):
    """Per-configuration figures derived from the windows by ``wattscope.metrics``.
    ``figures`` maps figure name to value; see metrics.FIGURES."""

    kind: ClassVar[str] = "config_result"
    config_id: str
    model: str
    batch: int
    precision: str
    synthetic: bool
    ok: bool
    reason: str
    figures: dict[str, float]
    engine: str = "eager"  # the decode engine the row ran on (config.ENGINES)
    # Its group's precisions did not fit in memory together: each was loaded, measured
    # and unloaded in turn every round (metrics.RELOADED).
    reloaded: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if not self.reloaded:
            del d["reloaded"]  # rows loaded together: recordings stay as they were before reloads
        return d


@dataclass(frozen=True)
class RunWarning(Event):
    kind: ClassVar[str] = "warning"
    source: str  # "sampler" | "runner" | "session" | "metrics" | ...
    message: str
    config_id: str | None = None


@dataclass(frozen=True)
class RunEnded(Event):
    kind: ClassVar[str] = "run_ended"
    status: str  # one of RUN_ENDINGS
    reason: str = ""


# How a run can end: RunEnded.status, a finished recording's status, and (in cli.py) the
# exit code of `wattscope run`. A stop asked for by a signal or forced by a fault says
# which, so a recording tells a completed sweep from one cut short, and why.
RUN_ENDINGS = (
    "completed",  # every configuration ran
    "interrupted",  # Ctrl-C (SIGINT) or the app's quit
    "terminated",  # SIGTERM (kill, timeout)
    "hangup",  # SIGHUP (the terminal or SSH session went away)
    "output-closed",  # the display's output closed (a broken pipe)
    "display-failed",  # the display raised an error
    "write-error",  # the recording could not be written (disk full, I/O error)
    "failed",  # the runner failed
)


# -- serving load (``wattscope serve-bench``) -------------------------------------------


@dataclass(frozen=True)
class ServePhase(Event):
    """A phase of a serving run, sent when it ends (``t_ns`` equals ``end_ns``): "idle"
    (the engine loaded, no requests: the idle power the attribution holds fixed) or "load"
    (open-loop arrivals at ``rate_rps`` for the configured duration, then the drain of the
    requests still in flight). ``index`` counts the load phases of a precision from 0
    (-1 for idle); ``requests`` is how many were sent."""

    kind: ClassVar[str] = "serve_phase"
    phase: str  # "idle" | "load"
    index: int
    rate_rps: float
    start_ns: int
    end_ns: int
    precision: str = ""
    requests: int = 0


@dataclass(frozen=True)
class Request(Event):
    """One request of a serving run, sent when it ended. ``arrival_ns`` is its scheduled
    arrival, ``sent_ns`` when it went out, ``token_ns`` the arrival of each streamed
    token (the first is the prefill's). On failure ``reason`` says why (refused, error
    response, invalid stream, timed out, cut off by the drain limit); tokens that arrived
    before stay recorded."""

    kind: ClassVar[str] = "request"
    request_id: str
    rate_index: int
    arrival_ns: int
    sent_ns: int
    prompt_tokens: int
    max_tokens: int
    token_ns: list[int]
    ok: bool
    reason: str = ""
    precision: str = ""


@dataclass(frozen=True)
class EngineSteps(Event):
    """A batch of an in-process engine's steps, each ``[start_ns, end_ns, prefill_tokens,
    decode_tokens]``: the ground truth of what ran when, for checking the attribution."""

    kind: ClassVar[str] = "engine_steps"
    steps: list[list[int]] = field(default_factory=list)
