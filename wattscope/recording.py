"""Recordings: one self-describing, crash-safe SQLite file per run.

SQLite (standard library) because it is crash-safe (WAL: a `kill -9` loses only the
uncommitted tail, and a torn last frame is ignored on open), queryable with plain SQL and
readable by pandas. Samples live in their own narrow table (the bulk of the file); every
other event is a JSON row in `events`, with SQL views `windows`, `results` and `warnings`
over it for users who query the file directly.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wattscope import metrics
from wattscope.errors import WattscopeError
from wattscope.events import (
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    ConfigFinished,
    ConfigResult,
    ConfigStarted,
    Event,
    RunEnded,
    RunStarted,
    RunWarning,
    Samples,
    Window,
    now_ns,
)

COMMIT_INTERVAL_NS = 500_000_000  # a crash loses at most this much (plus the queue in flight)
REPLAY_BATCH_NS = 100_000_000  # samples regrouped into batches of this span on replay
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = f"""
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE samples({", ".join(f"{c} {'INTEGER' if c in ('t_ns', 'gpu', 'fresh') else 'REAL'}" for c in SAMPLE_COLUMNS)});
CREATE INDEX samples_t ON samples(t_ns);
CREATE TABLE events(seq INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL, kind TEXT NOT NULL, json TEXT NOT NULL);
CREATE INDEX events_t ON events(t_ns);
CREATE VIEW windows AS SELECT t_ns,
  json_extract(json, '$.config_id') AS config_id, json_extract(json, '$.phase') AS phase,
  json_extract(json, '$.role') AS role, json_extract(json, '$.repeat') AS repeat,
  json_extract(json, '$.start_ns') AS start_ns, json_extract(json, '$.end_ns') AS end_ns,
  json_extract(json, '$.energy_start_j') AS energy_start_j, json_extract(json, '$.energy_end_j') AS energy_end_j,
  json_extract(json, '$.calls') AS calls, json_extract(json, '$.steps') AS steps, json_extract(json, '$.tokens') AS tokens,
  json_extract(json, '$.work_end_ns') AS work_end_ns
  FROM events WHERE kind = 'window';
CREATE VIEW results AS SELECT t_ns,
  json_extract(json, '$.config_id') AS config_id, json_extract(json, '$.model') AS model,
  json_extract(json, '$.batch') AS batch, json_extract(json, '$.precision') AS precision,
  json_extract(json, '$.synthetic') AS synthetic, json_extract(json, '$.ok') AS ok,
  json_extract(json, '$.reason') AS reason, json_extract(json, '$.figures') AS figures
  FROM events WHERE kind = 'config_result';
CREATE VIEW warnings AS SELECT t_ns, json_extract(json, '$.source') AS source,
  json_extract(json, '$.config_id') AS config_id, json_extract(json, '$.message') AS message
  FROM events WHERE kind = 'warning';
"""


class RecordingError(WattscopeError):
    """A recording that cannot be read, phrased for the user (names the file)."""


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in a recording")


def _dumps(d: Any) -> str:
    # NaN is not JSON; store it as null so any JSON reader (and SQLite's json1) accepts it.
    return json.dumps(_nan_to_none(d), default=_json_default, allow_nan=False)


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    return o


class Recorder:
    """Writes one run's events to a new SQLite file. Not thread-safe: one thread (the
    session's reader) owns it. Commits at most COMMIT_INTERVAL_NS apart; call
    ``maybe_commit`` when idle so a quiet stream still reaches the disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise RecordingError(f"{self.path}: already exists; choose another output file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a process crash in WAL mode (only an OS crash or power
        # loss can drop the last commits), and keeps commits cheap.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")
        self._set_meta({"schema_version": SCHEMA_VERSION, "status": "running"})
        self._commit()
        self._closed = False

    def _commit(self) -> None:
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")
        self._last_commit = now_ns()

    def _set_meta(self, items: dict[str, Any]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            [(k, _dumps(v)) for k, v in items.items()],
        )

    def write(self, event: Event) -> None:
        if isinstance(event, Samples):
            self._db.executemany(
                f"INSERT INTO samples VALUES ({','.join('?' * len(SAMPLE_COLUMNS))})", event.rows
            )
        else:
            d = event.to_dict()
            self._db.execute(
                "INSERT INTO events(t_ns, kind, json) VALUES (?, ?, ?)",
                (event.t_ns, event.kind, _dumps(d)),
            )
            if isinstance(event, RunStarted):
                self._set_meta({"run": event.meta})
            elif isinstance(event, RunEnded):
                self._set_meta({"status": event.status, "end_reason": event.reason})
        self.maybe_commit()

    def maybe_commit(self) -> None:
        if now_ns() - self._last_commit >= COMMIT_INTERVAL_NS:
            self._commit()

    def close(self) -> None:
        """Commit and fold the WAL back into the file, so a finished recording is one
        self-contained file that can be copied anywhere."""
        if self._closed:
            return
        self._closed = True
        self._db.execute("COMMIT")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.close()


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise RecordingError(f"{path}: recording not found")
    with path.open("rb") as f:
        if f.read(16) != _SQLITE_MAGIC:
            raise RecordingError(f"{path}: not a wattscope recording (not an SQLite file)")
    wal = Path(str(path) + "-wal")
    # A finished recording opens read-only; one left by a crash still has its WAL, which
    # SQLite must be allowed to replay (it ignores a torn last frame by itself).
    if wal.exists() and os.access(path.parent, os.W_OK):
        db = sqlite3.connect(path, check_same_thread=False)
    else:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as e:
        db.close()
        raise RecordingError(f"{path}: not a wattscope recording ({e})") from None
    version = json.loads(rows.get("schema_version", "null"))
    if not isinstance(version, int):
        db.close()
        raise RecordingError(f"{path}: not a wattscope recording (no schema version)")
    if version > SCHEMA_VERSION:
        db.close()
        raise RecordingError(
            f"{path}: recording schema version {version} is newer than this wattscope reads "
            f"(up to {SCHEMA_VERSION}); upgrade wattscope to read it"
        )
    return db


def _integrate(t_ns: np.ndarray, power_w: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray) -> np.ndarray:
    """Energy (J) of each [start, end] from power samples by the trapezoid rule: the
    cumulative integral at the sample times, linearly interpolated at the window edges."""
    ok = ~np.isnan(power_w)
    t, p = t_ns[ok], power_w[ok]
    if len(t) < 2:
        return np.full(len(start_ns), np.nan)
    cum = np.concatenate(([0.0], np.cumsum((p[1:] + p[:-1]) / 2 * np.diff(t) / 1e9)))
    out = np.interp(end_ns, t, cum) - np.interp(start_ns, t, cum)
    covered = (start_ns >= t[0]) & (end_ns <= t[-1])
    return np.where(covered, out, np.nan)


class Recording:
    """A recording opened for reading: ``.meta`` and pandas DataFrames. Works on a file
    whose run is still going or was killed (``.complete`` is then False)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = _connect(self.path)
        raw = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        values = {k: json.loads(v) for k, v in raw.items()}
        self.status: str = values.get("status", "running")
        self.meta: dict[str, Any] = {
            **values.get("run", {}),
            "schema_version": values["schema_version"],
            "status": self.status,
            "end_reason": values.get("end_reason", ""),
        }

    @property
    def complete(self) -> bool:
        return self.status in ("completed", "interrupted", "failed")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _event_dicts(self, kind: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT json FROM events WHERE kind = ? ORDER BY t_ns, seq", (kind,))
        return [json.loads(r[0]) for r in rows]

    @cached_property
    def samples(self) -> pd.DataFrame:
        cur = self._db.execute(f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples ORDER BY t_ns")
        rows = cur.fetchall()
        df = pd.DataFrame.from_records(rows, columns=list(SAMPLE_COLUMNS))
        return df.astype({c: "float64" for c in SAMPLE_COLUMNS if c not in ("t_ns", "gpu", "fresh")})

    @cached_property
    def windows(self) -> pd.DataFrame:
        cols = ["config_id", "phase", "role", "repeat", "start_ns", "end_ns", "work_end_ns",
                "energy_start_j", "energy_end_j", "calls", "steps", "tokens"]
        df = pd.DataFrame(self._event_dicts("window"), columns=cols)
        df["energy_j"] = df["energy_end_j"] - df["energy_start_j"]
        df["duration_s"] = (df["end_ns"] - df["start_ns"]) / 1e9
        df["work_s"] = (df["work_end_ns"].fillna(df["end_ns"]) - df["start_ns"]) / 1e9
        df["power_w"] = df["energy_j"] / df["duration_s"]
        df["integrated_j"] = self._integrated(df)
        return df

    def _integrated(self, windows: pd.DataFrame) -> np.ndarray:
        """Each window's energy from the instant-power samples: over every GPU the run
        measured (a window's counter energy is their sum)."""
        if windows.empty:
            return np.array([], dtype=float)
        total = np.zeros(len(windows))
        for index in [g.index for g in metrics.run_meta(self.meta).gpus] or [0]:
            # Two columns straight from SQLite: the cross-check must not cost loading every
            # sample column of an hour-long recording.
            rows = self._db.execute(
                "SELECT t_ns, power_w FROM samples WHERE gpu = ? ORDER BY t_ns", (index,)
            ).fetchall()
            tp = np.array(rows, dtype=float).reshape(-1, 2)
            total += _integrate(
                tp[:, 0],
                tp[:, 1],
                windows["start_ns"].to_numpy(float),
                windows["end_ns"].to_numpy(float),
            )
        return total

    @cached_property
    def _recomputed(self) -> dict[str, tuple[ConfigResult, RunWarning]]:
        """Results of configurations that finished but whose result was never stored (the
        run ended between the two), derived from the recorded windows exactly as the live
        session derives them, each with a warning that says so."""
        have = {d["config_id"] for d in self._event_dicts("config_result")}
        missing = [e for e in map(Event.from_dict, self._event_dicts("config_finished"))
                   if isinstance(e, ConfigFinished) and e.config_id not in have]
        if not missing:
            return {}
        started = [e for e in map(Event.from_dict, self._event_dicts("config_started")) if isinstance(e, ConfigStarted)]
        windows = [e for e in map(Event.from_dict, self._event_dicts("window")) if isinstance(e, Window)]
        by_id = {s.config_id: s for s in started}
        ci_target = metrics.run_meta(self.meta).sweep.get("protocol", {}).get("ci_target")
        out = {}
        for f in missing:
            if f.config_id not in by_id:
                continue
            result, _ = metrics.group_result(by_id[f.config_id], f, started, windows, ci_target)
            note = RunWarning(f.t_ns, "recording", f"{f.config_id}: result recomputed from its recorded windows "
                              "(the run ended before the result was stored)", f.config_id)
            out[f.config_id] = (result, note)
        return out

    def _result_dicts(self) -> list[dict[str, Any]]:
        stored = self._event_dicts("config_result")
        return stored + [r.to_dict() for r, _ in self._recomputed.values()]

    @cached_property
    def results(self) -> pd.DataFrame:
        rows = []
        for d in self._result_dicts():
            figures = d.pop("figures") or {}
            for k in ("kind", "t_ns"):
                d.pop(k)
            rows.append({**d, **{k: (np.nan if v is None else v) for k, v in figures.items()}})
        base = ["config_id", "model", "batch", "precision", "synthetic", "ok", "reason"]
        return pd.DataFrame(rows, columns=base if not rows else None)

    @cached_property
    def warnings(self) -> pd.DataFrame:
        cols = ["t_ns", "source", "config_id", "message"]
        notes = [w.to_dict() for _, w in self._recomputed.values()]
        return pd.DataFrame(self._event_dicts("warning") + notes, columns=cols)

    def time_range(self) -> tuple[int, int]:
        """First and last timestamp of anything recorded (ns)."""
        lo, hi = self._db.execute(
            "SELECT min(t), max(t) FROM (SELECT min(t_ns) t FROM events UNION ALL SELECT max(t_ns) FROM events "
            "UNION ALL SELECT min(t_ns) FROM samples UNION ALL SELECT max(t_ns) FROM samples)"
        ).fetchone()
        return int(lo or 0), int(hi or 0)

    def events(
        self, start_ns: int | None = None, end_ns: int | None = None, *, samples: bool = True
    ) -> Iterator[Event]:
        """The run's event stream in time order, as the live session produced it: sample
        rows regrouped into batches of at most REPLAY_BATCH_NS. Streams from SQLite
        cursors, so the first events of an hour-long recording arrive at once."""
        lo = -(2**63) if start_ns is None else start_ns
        hi = 2**63 - 1 if end_ns is None else end_ns
        ev_cur = self._db.execute(
            "SELECT t_ns, json FROM events WHERE t_ns >= ? AND t_ns <= ? ORDER BY t_ns, seq", (lo, hi)
        )
        # A separate connection so both cursors can step independently.
        sdb = _connect(self.path) if samples else None
        s_cur = (
            sdb.execute(
                f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE t_ns >= ? AND t_ns <= ? ORDER BY t_ns",
                (lo, hi),
            )
            if sdb
            else iter(())
        )
        try:
            recomputed = self._recomputed
            for event in _merge(ev_cur, s_cur):
                yield event
                if isinstance(event, ConfigFinished) and event.config_id in recomputed:
                    yield from recomputed[event.config_id]
        finally:
            if sdb:
                sdb.close()


def _merge(ev_cur: Iterator[tuple[int, str]], s_cur: Iterator[tuple]) -> Iterator[Event]:
    nan = float("nan")
    next_ev = next(ev_cur, None)
    next_s = next(s_cur, None)
    while next_ev is not None or next_s is not None:
        if next_ev is not None and (next_s is None or next_ev[0] <= next_s[0]):
            yield Event.from_dict(json.loads(next_ev[1]))
            next_ev = next(ev_cur, None)
            continue
        assert next_s is not None
        batch_start = next_s[0]
        limit = batch_start + REPLAY_BATCH_NS
        if next_ev is not None:
            limit = min(limit, next_ev[0])
        rows: list[tuple] = []
        while next_s is not None and (next_s[0] < limit or not rows):
            rows.append(tuple(nan if v is None else v for v in next_s))
            next_s = next(s_cur, None)
        yield Samples(t_ns=int(rows[-1][0]), rows=rows)


def load(path: str | Path) -> Recording:
    """Open a recording: ``rec.meta``, ``rec.samples``, ``rec.windows``, ``rec.results``."""
    return Recording(path)
