"""Recordings: one self-describing, crash-safe SQLite file per run.

SQLite (standard library) because it is crash-safe (WAL: a `kill -9` loses only the
uncommitted tail, and a torn last frame is ignored on open), queryable with plain SQL and
readable by pandas. Samples live in their own narrow table (the bulk of the file); every
other event is a JSON row in `events`, with SQL views `windows`, `results` and `warnings`
over it for users who query the file directly.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import math
import os
import sqlite3
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wattscope import metrics
from wattscope.errors import EXIT_FAILED, WattscopeError
from wattscope.events import (
    RUN_ENDINGS,
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


class RecordingWriteError(RecordingError):
    """The recording could not be written (disk full, file too large, I/O error): the
    run is stopped, and exits with EXIT_FAILED, since the machine failed, not the input."""

    exit_code = EXIT_FAILED


# Held back from the output's filesystem for the whole run and given back after a write
# error, so that even a full disk leaves room to store how the run ended and fold the WAL.
RESERVE_BYTES = 1 << 20
_WRITE_ERRORS = (sqlite3.Error, OSError)


def _why(e: BaseException) -> str:
    """The cause of a write error in a few words (SQLite's message or the OS's)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _hold_reserve(folder: Path, size: int) -> int:
    """A descriptor of a nameless file holding ``size`` bytes of ``folder``'s filesystem.
    Closing it gives the space back; a crash gives it back too, and no file is left."""
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except (OSError, AttributeError):  # a filesystem without O_TMPFILE
        fd, name = tempfile.mkstemp(dir=folder, prefix=".wattscope-reserve-")
        os.unlink(name)
    try:
        os.posix_fallocate(fd, 0, size)
    except BaseException:
        os.close(fd)
        raise
    return fd
def event_json(event: Event) -> str:
    """An event as the recording stores it (``events.json``): ``Event.to_dict`` as strict
    JSON, NaN as null. ``Event.from_dict(json.loads(...))`` reads it back."""
    return _dumps(event.to_dict())


class Recorder:
    """Writes one run's events to a new SQLite file. Not thread-safe: one thread (the
    session's reader) owns it. Commits at most COMMIT_INTERVAL_NS apart; call
    ``maybe_commit`` when idle so a quiet stream still reaches the disk.

    A write error (disk full, I/O error) raises ``RecordingWriteError`` once; from then on
    the recorder only remembers it (``error``) and drops what it is given, and ``close``
    gives back the reserved space, drops the failed transaction and stores the ending as
    status 'write-error' as far as the filesystem allows. What was committed before the
    error stays loadable. A recorder that cannot start removes what it made."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise RecordingError(f"{self.path}: already exists; choose another output file")
        self.error: str | None = None
        self._closed = False
        self._reserve: int | None = None
        self._db: sqlite3.Connection | None = None
        self._ending: RunEnded | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RecordingError(f"{self.path.parent}: cannot make the output folder ({_why(e)})") from None
        if not os.access(self.path.parent, os.W_OK):
            raise RecordingError(f"{self.path.parent}: the output folder is not writable; choose another with -o")
        try:
            self._reserve = _hold_reserve(self.path.parent, RESERVE_BYTES)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against a process crash in WAL mode (only an OS crash or power
            # loss can drop the last commits), and keeps commits cheap.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN")
            self._set_meta({"schema_version": SCHEMA_VERSION, "status": "running"})
            self._commit()
        except _WRITE_ERRORS as e:
            self.discard()
            raise RecordingWriteError(f"{self.path}: cannot start the recording ({_why(e)}); nothing was written") from None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "the recorder is not open"
        return self._db

    def _commit(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")
        self._last_commit = now_ns()

    def _set_meta(self, items: dict[str, Any]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            [(k, _dumps(v)) for k, v in items.items()],
        )

    def _failed(self, e: BaseException) -> RecordingWriteError:
        self.error = f"{self.path}: the recording could not be written ({_why(e)})"
        return RecordingWriteError(self.error)

    def write(self, event: Event) -> None:
        """Add ``event`` (committed within COMMIT_INTERVAL_NS). Raises RecordingWriteError
        on the first write error; after it, does nothing but keep a RunEnded for ``close``."""
        if isinstance(event, RunEnded):
            self._ending = event
        if self.error is not None:
            return
        try:
            self._insert(event)
            self._maybe_commit()
        except _WRITE_ERRORS as e:
            raise self._failed(e) from None

    def _insert(self, event: Event) -> None:
        if isinstance(event, Samples):
            self.db.executemany(
                f"INSERT INTO samples VALUES ({','.join('?' * len(SAMPLE_COLUMNS))})", event.rows
            )
            return
        self.db.execute(
            "INSERT INTO events(t_ns, kind, json) VALUES (?, ?, ?)",
            (event.t_ns, event.kind, event_json(event)),
        )
        if isinstance(event, RunStarted):
            self._set_meta({"run": event.meta})
        elif isinstance(event, RunEnded):
            self._set_meta({"status": event.status, "end_reason": event.reason})

    def maybe_commit(self) -> None:
        """Commit if the last commit is COMMIT_INTERVAL_NS old (see ``write`` for errors)."""
        if self.error is not None:
            return
        try:
            self._maybe_commit()
        except _WRITE_ERRORS as e:
            raise self._failed(e) from None

    def _maybe_commit(self) -> None:
        if now_ns() - self._last_commit >= COMMIT_INTERVAL_NS:
            self._commit()

    def close(self) -> None:
        """Commit and fold the WAL back into the file, so a finished recording is one
        self-contained file that can be copied anywhere. Never raises: a write error
        here (or before) leaves ``error`` set and the ending stored as 'write-error' as
        far as the filesystem allows."""
        if self._closed or self._db is None:
            return
        self._closed = True
        try:
            if self.error is None:
                try:
                    self.db.execute("COMMIT")
                except _WRITE_ERRORS as e:
                    self._failed(e)
            if self.error is not None:
                self._store_write_error()
            self._fold_wal()
        finally:
            self._release_reserve()
            self.db.close()

    def _store_write_error(self) -> None:
        """After a write error: give the reserve back, commit what the failed transaction
        still holds (else drop it), fold what was committed into the file (which empties
        the WAL: a file-size limit may be what the WAL hit) and store the run's ending as
        'write-error'. Each step as far as the filesystem allows."""
        self._release_reserve()
        t = self._ending.t_ns if self._ending is not None else now_ns()
        self._try("COMMIT")
        self._try("ROLLBACK")
        self._try("PRAGMA wal_checkpoint(TRUNCATE)")
        if self._try("BEGIN"):
            try:
                self._insert(RunEnded(t, "write-error", self.error or ""))
            except _WRITE_ERRORS:
                pass
            self._try("COMMIT")
            self._try("ROLLBACK")  # if the ending could not be committed

    def _try(self, statement: str) -> bool:
        """Run ``statement`` (a COMMIT or ROLLBACK only inside a transaction); whether it ran."""
        db = self.db
        if statement in ("COMMIT", "ROLLBACK") and not db.in_transaction:
            return False
        try:
            db.execute(statement)
            return True
        except _WRITE_ERRORS:
            return False

    def _fold_wal(self) -> None:
        """Fold the WAL into the file; on a full disk, once more with the reserve given
        back. If that fails too the WAL stays beside the file (a reader replays it) and
        the run counts as a write error."""
        while True:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.db.execute("PRAGMA journal_mode=DELETE")
                return
            except _WRITE_ERRORS as e:
                if self._reserve is not None:
                    self._release_reserve()
                    continue
                if self.error is None:
                    self._failed(e)
                    self._store_write_error()
                return

    def _release_reserve(self) -> None:
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def discard(self) -> None:
        """Close and remove the file and its WAL: for a run that never started."""
        self._closed = True
        self._release_reserve()
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


# A finished recording may also be read from an xz or gzip copy of its file (measured runs'
# recordings shrink 3-5x so; the benchmark results are kept that way). SQLite reads a
# database from bytes in memory, so the copy is decompressed there, never to disk, up to
# MAX_DECOMPRESSED_BYTES (an hour at 1 kHz is a few hundred MB; past the cap, decompress
# the file first).
_OPENERS: dict[bytes, Callable[[Path], io.BufferedIOBase]] = {
    b"\xfd7zXZ\x00": lambda p: lzma.open(p, "rb"),
    b"\x1f\x8b": lambda p: gzip.open(p, "rb"),
}
COMPRESSED_SUFFIXES = (".xz", ".gz")
MAX_DECOMPRESSED_BYTES = 2 << 30


def label(path: str | Path) -> str:
    """A recording's name for tables and legends: its file name without the compression
    suffix and the extension (``run.wattscope.xz`` -> ``run``)."""
    p = Path(path)
    if p.suffix in COMPRESSED_SUFFIXES:
        p = p.with_suffix("")
    return p.stem


def _decompressed(path: Path, magic: bytes) -> sqlite3.Connection | None:
    """An in-memory, read-only copy of a compressed recording; None if it is not compressed."""
    opener = next((o for m, o in _OPENERS.items() if magic.startswith(m)), None)
    if opener is None:
        return None
    too_large = (f"{path}: over {MAX_DECOMPRESSED_BYTES >> 30} GiB decompressed, too large to read in memory; "
                 "decompress it first (xz -dk or gunzip -k) and read that file")
    data = bytearray()
    try:
        with opener(path) as f:
            # The header first: a compressed file of anything else is refused unread.
            if f.read(16) != _SQLITE_MAGIC:
                raise RecordingError(f"{path}: not a wattscope recording (compressed, but not an SQLite file)")
            data += _SQLITE_MAGIC
            while chunk := f.read(1 << 20):
                data += chunk
                if len(data) > MAX_DECOMPRESSED_BYTES:
                    raise RecordingError(too_large)
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as e:
        raise RecordingError(f"{path}: damaged compressed recording ({e})") from None
    except MemoryError:
        raise RecordingError(too_large) from None
    # A copy taken while the run was going is in WAL mode, which a database in memory
    # cannot open; the copy holds no WAL anyway, so it is read as a rollback-journal file.
    data[18:20] = b"\x01\x01"
    db = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        db.deserialize(bytes(data))
        db.execute("PRAGMA query_only = ON")
    except sqlite3.DatabaseError as e:
        db.close()
        raise RecordingError(f"{path}: damaged compressed recording ({e})") from None
    return db


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise RecordingError(f"{path}: recording not found")
    with path.open("rb") as f:
        magic = f.read(16)
    db = _decompressed(path, magic)
    if db is None:
        if magic != _SQLITE_MAGIC:
            raise RecordingError(f"{path}: not a wattscope recording (not an SQLite file, nor an xz or gzip copy of one)")
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
    except ValueError as e:  # text that is not UTF-8: a damaged byte inside the meta table
        db.close()
        raise RecordingError(f"{path}: damaged recording ({type(e).__name__}: {e})") from None
    try:
        version = json.loads(rows.get("schema_version", "null"))
    except (TypeError, ValueError):
        version = None
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


# What reading a damaged file raises: SQLite's "malformed" and undecodable text, a JSON
# row that does not parse, an event row whose fields are not the event's.
_DAMAGE = (sqlite3.DatabaseError, ValueError, TypeError, KeyError, AttributeError)


@contextmanager
def _damage_is_an_error(path: Path) -> Iterator[None]:
    """Turn the exceptions of reading a damaged recording into one RecordingError naming the file."""
    try:
        yield
    except RecordingError:
        raise
    except _DAMAGE as e:
        raise RecordingError(f"{path}: damaged recording ({type(e).__name__}: {e})") from None


# A sample row the stream can fold: integer time and GPU, numbers (or NULL) elsewhere.
_SAMPLE_OK = " AND ".join(
    [f"typeof({c}) = 'integer'" for c in SAMPLE_COLUMNS[:2]]
    + [f"typeof({c}) IN ('integer', 'real', 'null')" for c in SAMPLE_COLUMNS[2:]]
)


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
        with _damage_is_an_error(self.path):
            raw = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            values = {k: json.loads(v) for k, v in raw.items()}
            if not isinstance(values.get("run", {}), dict):
                raise ValueError("its run metadata is not an object")
        self.status: str = values.get("status", "running")
        self.meta: dict[str, Any] = {
            **values.get("run", {}),
            "schema_version": values["schema_version"],
            "status": self.status,
            "end_reason": values.get("end_reason", ""),
        }

    @property
    def complete(self) -> bool:
        return self.status in RUN_ENDINGS

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _event_dicts(self, kind: str) -> list[dict[str, Any]]:
        with _damage_is_an_error(self.path):
            rows = self._db.execute("SELECT json FROM events WHERE kind = ? ORDER BY t_ns, seq", (kind,))
            dicts = [json.loads(r[0]) for r in rows]
            if not all(isinstance(d, dict) for d in dicts):
                raise ValueError(f"a {kind} row is not an object")
            return dicts

    @cached_property
    def samples(self) -> pd.DataFrame:
        with _damage_is_an_error(self.path):
            return self._samples()

    def _samples(self) -> pd.DataFrame:
        cur = self._db.execute(f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples ORDER BY t_ns")
        rows = cur.fetchall()
        df = pd.DataFrame.from_records(rows, columns=list(SAMPLE_COLUMNS))
        return df.astype({c: "float64" for c in SAMPLE_COLUMNS if c not in ("t_ns", "gpu", "fresh")})

    @cached_property
    def windows(self) -> pd.DataFrame:
        with _damage_is_an_error(self.path):
            return self._windows()

    def _windows(self) -> pd.DataFrame:
        cols = ["config_id", "phase", "role", "repeat", "start_ns", "end_ns", "work_end_ns",
                "energy_start_j", "energy_end_j", "calls", "steps", "tokens"]
        df = pd.DataFrame(self._event_dicts("window"), columns=cols)
        df["energy_j"] = df["energy_end_j"] - df["energy_start_j"]
        df["duration_s"] = (df["end_ns"] - df["start_ns"]) / 1e9
        df["work_s"] = (df["work_end_ns"].fillna(df["end_ns"]) - df["start_ns"]) / 1e9
        df["power_w"] = df["energy_j"] / df["duration_s"]
        df["integrated_j"] = self._integrated(df)
        df["sampler_stall"] = pd.Series(self._stalls(df), index=df.index, dtype=object)
        return df

    def _power_samples(self, gpu: int) -> np.ndarray:
        """(t_ns, power_w) rows of one GPU, in time order. Two columns straight from
        SQLite: the cross-check must not cost loading every sample column of an hour-long
        recording."""
        rows = self._db.execute(
            "SELECT t_ns, power_w FROM samples WHERE gpu = ? ORDER BY t_ns", (gpu,)
        ).fetchall()
        return np.array(rows, dtype=float).reshape(-1, 2)

    def _gpu_indices(self) -> list[int]:
        return [g.index for g in metrics.run_meta(self.meta).gpus] or [0]

    def _integrated(self, windows: pd.DataFrame) -> np.ndarray:
        """Each window's energy from the instant-power samples: over every GPU the run
        measured (a window's counter energy is their sum)."""
        if windows.empty:
            return np.array([], dtype=float)
        total = np.zeros(len(windows))
        for index in self._gpu_indices():
            tp = self._power_samples(index)
            total += _integrate(
                tp[:, 0],
                tp[:, 1],
                windows["start_ns"].to_numpy(float),
                windows["end_ns"].to_numpy(float),
            )
        return total

    def _stalls(self, windows: pd.DataFrame) -> list[str | None]:
        """Per measured window, why the sampler did not cover it (metrics.sampler_stall)."""
        rate = self.meta.get("sampler", {}).get("rate_hz")
        # The sampler reads every GPU in one loop: a stall shows on the first as on all.
        times = self._power_samples(self._gpu_indices()[0])[:, 0].astype(np.int64)
        out: list[str | None] = []
        for role, start, end in zip(windows["role"], windows["start_ns"], windows["end_ns"]):
            if role != "measure":
                out.append(None)
                continue
            # The window's samples and one neighbour each side, as the rule reads them.
            lo, hi = np.searchsorted(times, start, "left"), np.searchsorted(times, end, "right")
            near = times[max(lo - 1, 0): hi + 1].tolist()
            out.append(metrics.sampler_stall(near, int(start), int(end), rate))
        return out

    @cached_property
    def _recomputed(self) -> dict[str, tuple[ConfigResult, RunWarning]]:
        """Results of configurations that finished but whose result was never stored (the
        run ended between the two), derived from the recorded windows exactly as the live
        session derives them, each with a warning that says so."""
        with _damage_is_an_error(self.path):
            return self._recompute()

    def _recompute(self) -> dict[str, tuple[ConfigResult, RunWarning]]:
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
        with _damage_is_an_error(self.path):
            return self._results()

    def _results(self) -> pd.DataFrame:
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
        with _damage_is_an_error(self.path):
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
        with _damage_is_an_error(self.path):
            # Two cursors of the one connection: each has its own statement and steps on
            # its own (a second connection would mean a second decompressed copy of a
            # compressed recording).
            ev_cur = self._db.execute(
                "SELECT t_ns, json FROM events WHERE t_ns >= ? AND t_ns <= ? ORDER BY t_ns, seq", (lo, hi)
            )
            s_cur = (
                self._db.execute(
                    f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE t_ns >= ? AND t_ns <= ? "
                    f"AND {_SAMPLE_OK} ORDER BY t_ns",
                    (lo, hi),
                )
                if samples
                else iter(())
            )
            recomputed = self._recomputed
            for event in _merge(ev_cur, s_cur):
                yield event
                if isinstance(event, ConfigFinished) and event.config_id in recomputed:
                    yield from recomputed[event.config_id]


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
