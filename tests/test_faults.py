"""Runtime faults: a recording that cannot be written, a display that dies or loses its
output, SIGTERM and SIGHUP, and a sampler that stalls. Each ends the run with its
recording finalised (status names the cause), a one-line message and the documented
exit code, never a hang or a traceback. Faults of the machine are made real where that
is possible without privileges (a file-size limit, a closed pipe, signals, SIGSTOP; a
small tmpfs where a user namespace allows mounting one) and injected otherwise."""

from __future__ import annotations

import errno
import io
import multiprocessing as mp
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import wattscope
from wattscope import config, recording
from wattscope.events import RunEnded, RunStarted, Samples, now_ns
from wattscope.recording import Recorder, RecordingWriteError
from wattscope.session import Session, display_ending, watched
from wattscope.state import RunState

ROOT = Path(__file__).resolve().parent.parent

# Fast enough to fill a small file in seconds: six rows, 1 kHz sampling.
FAST = """
name = "fast"
[protocol]
min_rounds = 2
max_rounds = 2
max_warmup_rounds = 2
[sampler]
rate_hz = 1000
[[matrix]]
models = ["synthetic:Qwen2-1.5B"]
batches = [1, 8]
precisions = ["fp16", "int8", "nf4"]
"""


def _rows(t0: int, n: int) -> list[tuple]:
    return [(t0 + i * 10_000_000, 0, 100.0, 100.0, float("nan"), 1000.0, 50.0, 40.0, 1.0, 1) for i in range(n)]


class FailingDb:
    """An SQLite connection whose statements starting with one of ``failing`` fail as a
    full disk does, ``times`` times (then the space is back)."""

    def __init__(self, db: sqlite3.Connection, failing: tuple[str, ...], times: int = 1_000_000) -> None:
        self._db, self.failing, self.times = db, failing, times

    def _check(self, sql: str) -> None:
        if self.times > 0 and sql.lstrip().upper().startswith(self.failing):
            self.times -= 1
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, *args: Any) -> Any:
        self._check(sql)
        return self._db.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._check(sql)
        return self._db.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _started_recorder(path: Path) -> Recorder:
    rec = Recorder(path)
    rec.write(RunStarted(now_ns(), {"sweep": {"name": "x"}}))
    rec.write(Samples(now_ns(), _rows(now_ns(), 50)))
    rec._commit()
    return rec


# --------------------------------------------------------------------------- recorder


def test_a_write_error_mid_run_is_raised_once_and_the_ending_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "r.wattscope"
    rec = _started_recorder(path)
    rec._db = FailingDb(rec._db, ("INSERT",), times=1)  # type: ignore[assignment]
    with pytest.raises(RecordingWriteError) as raised:
        rec.write(Samples(now_ns(), _rows(now_ns(), 10)))
    assert raised.value.message == f"{path}: the recording could not be written (database or disk is full)"
    assert raised.value.exit_code == 1
    rec.write(Samples(now_ns(), _rows(now_ns(), 10)))  # dropped, no second error
    rec.maybe_commit()
    rec.write(RunEnded(now_ns(), "write-error", "x"))
    rec.close()
    loaded = wattscope.load(path)
    assert loaded.status == "write-error" and loaded.complete
    assert "database or disk is full" in loaded.meta["end_reason"]
    assert len(loaded.samples) == 50  # what was committed before the error
    assert not Path(f"{path}-wal").exists()


def test_a_write_error_at_finalisation_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "r.wattscope"
    rec = _started_recorder(path)
    rec.write(RunEnded(now_ns(), "completed", ""))
    rec._db = FailingDb(rec._db, ("COMMIT",), times=1)  # type: ignore[assignment]
    rec.close()
    assert rec.error == f"{path}: the recording could not be written (database or disk is full)"
    loaded = wattscope.load(path)
    assert loaded.status == "write-error"
    assert len(loaded.samples) == 50


def test_a_disk_that_stays_full_leaves_a_loadable_recording(tmp_path: Path) -> None:
    path = tmp_path / "r.wattscope"
    rec = _started_recorder(path)
    rec._db = FailingDb(rec._db, ("INSERT", "COMMIT", "BEGIN", "PRAGMA"))  # type: ignore[assignment]
    with pytest.raises(RecordingWriteError):
        rec.write(Samples(now_ns(), _rows(now_ns(), 10)))
    rec.close()  # nothing can be stored: it still returns, and the connection is closed
    loaded = wattscope.load(path)
    assert loaded.status == "running" and len(loaded.samples) == 50


def test_too_little_space_at_start_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(folder: Path, size: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(recording, "_hold_reserve", full)
    path = tmp_path / "out" / "r.wattscope"
    with pytest.raises(RecordingWriteError, match="No space left on device.*nothing was written"):
        Recorder(path)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_schema_that_cannot_be_written_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = sqlite3.connect

    def connect(*args: Any, **kw: Any) -> Any:
        return FailingDb(real(*args, **kw), ("COMMIT",))

    monkeypatch.setattr(recording.sqlite3, "connect", connect)
    with pytest.raises(RecordingWriteError, match="database or disk is full"):
        Recorder(tmp_path / "r.wattscope")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_is_bad_input(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root writes anywhere; a folder that is a file is as unwritable for anyone
        (tmp_path / "f").write_text("")
        with pytest.raises(recording.RecordingError, match="cannot make the output folder") as e:
            Recorder(tmp_path / "f" / "r.wattscope")
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(recording.RecordingError, match="not writable") as e:
            Recorder(ro / "r.wattscope")
    assert e.value.exit_code == 2


# --------------------------------------------------------------------------- display guard


class FakeSession:
    """What ``watched`` needs of a session: a run that goes until it is stopped."""

    def __init__(self) -> None:
        self.state = RunState()
        self.status = "starting"
        self.done = threading.Event()
        self.stops: list[tuple[str, str]] = []

    def start(self) -> None:
        self.status = "running"

    def stop(self, status: str = "interrupted", reason: str = "stopped by the user") -> None:
        self.stops.append((status, reason))
        if self.status == "running":
            self.status = self.stops[0][0]
            self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


@pytest.mark.parametrize("error, status", [
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), "output-closed"),
    (OSError(errno.EIO, "Input/output error"), "output-closed"),
    (KeyboardInterrupt(), "interrupted"),
    (ValueError("bad markup"), "display-failed"),
])
def test_a_failing_display_stops_the_run_with_its_cause(
    error: BaseException, status: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wattscope import session as session_module

    silenced: list[bool] = []  # the real one points this process's stdout at /dev/null
    monkeypatch.setattr(session_module, "_silence_stdout", lambda: silenced.append(True))
    session = FakeSession()
    with watched(session):  # type: ignore[arg-type]
        session.start()
        raise error
    assert session.status == status and session.done.is_set()
    assert session.stops[0] == display_ending(error)
    if status == "display-failed":
        assert session.stops[0][1] == "the display failed (ValueError: bad markup)"
    assert silenced == ([True] if status == "output-closed" else [])


def test_an_error_while_starting_goes_to_the_caller_without_waiting() -> None:
    session = FakeSession()
    with pytest.raises(RecordingWriteError):
        with watched(session):  # type: ignore[arg-type]
            raise RecordingWriteError("r.wattscope: cannot start the recording (No space left on device)")
    assert session.stops == []


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, "terminated"), (signal.SIGHUP, "hangup")])
def test_sigterm_and_sighup_stop_the_run_and_leave_the_display(sig: int, status: str) -> None:
    session = FakeSession()
    left = []
    before = signal.getsignal(sig)
    with watched(session, on_signal=lambda: left.append(True)):  # type: ignore[arg-type]
        session.start()
        os.kill(os.getpid(), sig)
        time.sleep(0.01)  # the handler runs between two bytecodes of this thread
    assert session.status == status and left == [True]
    assert signal.getsignal(sig) is before  # handlers are restored afterwards


# --------------------------------------------------------------------------- live runs


def _write_config(tmp_path: Path, text: str = FAST) -> Path:
    path = tmp_path / "fast.toml"
    path.write_text(text)
    return path


def _no_children_left(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while mp.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mp.active_children() == []


@pytest.mark.process
@pytest.mark.parametrize("where", ["mid-run", "finalisation"])
def test_a_session_stops_and_finalises_on_an_injected_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from wattscope import session as session_module
    from wattscope.headless import run_live

    class Faulty(Recorder):
        """Fails after ~1 s of samples (mid-run) or on the last commit (finalisation)."""

        batches = 0

        def write(self, event: Any) -> None:
            if isinstance(event, Samples):
                Faulty.batches += 1
                if where == "mid-run" and Faulty.batches == 10:
                    self._db = FailingDb(self._db, ("INSERT", "COMMIT"), times=1)  # type: ignore[assignment]
            if isinstance(event, RunEnded) and where == "finalisation":
                self._db = FailingDb(self._db, ("COMMIT",), times=1)  # type: ignore[assignment]
            super().write(event)

    monkeypatch.setattr(session_module, "Recorder", Faulty)
    out = tmp_path / "r.wattscope"
    sweep = config.load(_write_config(tmp_path, FAST.replace("batches = [1, 8]", "batches = [1]")))
    session = Session(sweep, out, sim=True)
    printed = io.StringIO()
    t0 = time.monotonic()
    status = run_live(session, printed)
    assert status == "write-error"
    assert session.reason == f"{out}: the recording could not be written (database or disk is full)"
    assert f"run write-error after" in printed.getvalue()
    assert time.monotonic() - t0 < 60
    _no_children_left()
    rec = wattscope.load(out)
    assert rec.status == "write-error" and rec.meta["end_reason"] == session.reason
    assert len(rec.samples) > 0
    if where == "finalisation":
        assert len(rec.results) == 3  # the sweep had finished: its rows were committed


def _python(script: str, *args: str, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, **kw)


# A `wattscope run` in a process whose files may not grow past LIMIT bytes: a real
# EFBIG from the OS, as a full disk gives ENOSPC. The reserve is shrunk below the limit
# (it is one file too).
LIMITED_RUN = """
    import resource, signal, sys
    limit = int(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    import wattscope.recording
    wattscope.recording.RESERVE_BYTES = 64 << 10
    from wattscope.cli import main
    sys.exit(main(["run", sys.argv[2], "--sim", "--headless", "-o", sys.argv[3]]))
"""


@pytest.mark.process
def test_a_file_size_limit_mid_run_stops_the_run_with_status_write_error(tmp_path: Path) -> None:
    out = tmp_path / "out" / "r.wattscope"
    done = _python(LIMITED_RUN, str(256 << 10), str(_write_config(tmp_path)), str(out))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"wattscope: error: {out}: the recording could not be written (disk I/O error)" in done.stderr
    rec = wattscope.load(out)
    assert rec.status == "write-error" and len(rec.samples) > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.wattscope"]


@pytest.mark.process
def test_a_file_size_limit_at_start_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out" / "r.wattscope"
    done = _python(LIMITED_RUN, str(16 << 10), str(_write_config(tmp_path)), str(out))
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"wattscope: error: {out}: cannot start the recording (File too large); nothing was written"
    ]
    assert list(out.parent.iterdir()) == []


def _can_mount_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.process
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no user namespace to mount a small tmpfs in (the file-size limit tests cover the fault)")
@pytest.mark.parametrize("size, code, status", [("600k", 1, None), ("1400k", 1, "write-error")])
def test_a_full_tmpfs(tmp_path: Path, size: str, code: int, status: str | None) -> None:
    """A real full filesystem: a small tmpfs in a private mount namespace. 600 KiB
    cannot hold the 1 MiB reserve (no start, nothing left); 1400 KiB fills mid-run."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cfg = _write_config(tmp_path)
    check = (f"{sys.executable} -c 'import wattscope, sys; r = wattscope.load(sys.argv[1]); print(\"STATUS\", r.status, len(r.samples))' "
             f"{mnt}/r.wattscope")
    script = (f"mount -t tmpfs -o size={size} tmpfs {mnt} && "
              f"{sys.executable} -m wattscope run {cfg} --sim --headless -o {mnt}/r.wattscope > /dev/null; "
              f"echo RC $?; ls -A {mnt}; {check if status else 'true'}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))})
    assert f"RC {code}" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    if status is None:
        assert "No space left on device); nothing was written" in done.stderr
        assert done.stdout.split("RC 1")[1].strip() == ""  # the folder is empty
    else:
        assert "database or disk is full" in done.stderr
        listing, _, verdict = done.stdout.split("RC 1")[1].partition("STATUS")
        assert listing.split() == ["r.wattscope"]
        assert verdict.split()[0] == "write-error" and int(verdict.split()[1]) > 0


def _cli(*args: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wattscope", *args], cwd=ROOT, text=True, **kw)


def _wait_for_line(stream: Any, needle: str, timeout: float = 90.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} in: {''.join(lines)}")


@pytest.mark.process
def test_a_broken_pipe_stops_the_run_without_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "r.wattscope"
    proc = _cli("run", "configs/quick.toml", "--sim", "--headless", "-o", str(out),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    _wait_for_line(proc.stdout, "phase")
    proc.stdout.close()  # `| head`: the reader leaves
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.splitlines() == [
        "wattscope: error: the output closed (Broken pipe); the run was stopped, the recording keeps what was measured",
        f"recording: {out} (output-closed)",
    ]
    rec = wattscope.load(out)
    assert rec.status == "output-closed" and rec.complete and len(rec.samples) > 0
    assert not Path(f"{out}-wal").exists()


@pytest.mark.process
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, "terminated"), (signal.SIGHUP, "hangup")])
def test_sigterm_and_sighup_finalise_the_recording(tmp_path: Path, sig: int, status: str) -> None:
    out = tmp_path / "r.wattscope"
    # A session of its own, as a terminal or a service manager starts it; the signal goes
    # to the whole group, children included, as a hangup does.
    proc = _cli("run", "configs/seed.toml", "--sim", "--headless", "-o", str(out),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    _wait_for_line(proc.stdout, "result ")
    os.killpg(proc.pid, sig)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 128 + sig, rest
    assert "Traceback" not in rest and rest.rstrip().endswith(f"recording: {out} ({status})")
    rec = wattscope.load(out)
    assert rec.status == status and rec.meta["end_reason"].startswith(f"stopped by {signal.Signals(sig).name}")
    assert not Path(f"{out}-wal").exists()
    assert 0 < len(rec.results) < 15 and rec.results["ok"].any()


# The real app in a real terminal (a pty), with a failure injected into its frame.
FAILING_APP = """
    import sys
    from wattscope.tui import app as tui
    real, frames = tui.WattscopeApp.frame, []
    def frame(self):
        frames.append(1)
        if len(frames) == 12:
            raise RuntimeError("injected display failure")
        real(self)
    tui.WattscopeApp.frame = frame
    from wattscope.cli import main
    sys.exit(main(["run", "configs/quick.toml", "--sim", "-o", sys.argv[1]]))
"""


@pytest.mark.process
def test_an_exception_inside_the_app_stops_the_run(tmp_path: Path) -> None:
    import fcntl
    import struct
    import termios

    out = tmp_path / "r.wattscope"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(FAILING_APP), str(out)], cwd=ROOT,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={**os.environ, "TERM": "xterm-256color"})
    os.close(slave)
    screen = b""
    while True:  # the terminal must be read, or the app blocks writing to it
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last process holding the terminal is gone
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 1
    text = screen.decode(errors="replace")
    assert "Traceback" not in text
    assert "wattscope: error: the display failed (RuntimeError: injected display failure)" in text
    rec = wattscope.load(out)
    assert rec.status == "display-failed" and rec.complete
    assert rec.meta["end_reason"] == "the display failed (RuntimeError: injected display failure)"
    with pytest.raises(ProcessLookupError):  # no runner or sampler left behind
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.1)


# --------------------------------------------------------------------------- sampler health


def test_the_stall_rule_reads_holes_and_rate_drops() -> None:
    from wattscope.metrics import sampler_stall

    ms = 1_000_000
    steady = list(range(0, 2000 * ms, 10 * ms))  # 100 Hz over 2 s
    assert sampler_stall(steady, 500 * ms, 1500 * ms, 100.0) is None
    holed = [t for t in steady if not 800 * ms < t < 1200 * ms]  # 0.4 s without a sample
    assert sampler_stall(holed, 500 * ms, 1500 * ms, 100.0) == \
        "the sampler stalled: no sample for 0.40 s (more than 0.25 s)"
    # The hole is counted to the window's edge when no sample follows it (a dead sampler).
    assert sampler_stall(steady[:100], 500 * ms, 1500 * ms, 100.0) == \
        "the sampler stalled: no sample for 0.51 s (more than 0.25 s)"
    # Half the rate, no hole above the limit: a rate drop.
    assert sampler_stall(steady[::2], 500 * ms, 1500 * ms, 100.0) == \
        "the sampler slowed: 51 samples/s of 100 (below 80%)"  # 51 in [0.5, 1.5] s
    # A slow sampler's period is no stall; a window too short to judge a rate is not either.
    assert sampler_stall(list(range(0, 20_000 * ms, 1000 * ms)), 3000 * ms, 9000 * ms, 1.0) is None
    assert sampler_stall(steady[::2], 500 * ms, 550 * ms, 100.0) is None


def _stream_with_a_hole(path: Path) -> tuple[Session, list[Any]]:
    """A live session fed a synthetic stream (no processes): one row, two measured
    decode windows; the sampler is silent for 0.6 s inside the second."""
    from wattscope.events import ConfigFinished, ConfigStarted, PhaseStarted, Window

    sweep = config.load(ROOT / "configs" / "quick.toml")
    session = Session(sweep, path, sim=True)
    session._recorder = Recorder(path)
    session._health_gpu = 0
    ms = 1_000_000
    t0 = now_ns()
    meta = {"gpu": {"index": 0}, "sampler": {"rate_hz": 100.0, "gpus": [0]}, "sweep": sweep.to_dict()}
    times = [t0 + i * 10 * ms for i in range(300) if not 1700 <= i * 10 < 2300]
    cid = "Qwen2-1.5B/b1/fp16"

    def window(r: int, start: int, end: int) -> Window:
        return Window(end, cid, "decode", "measure", r, start, end, 0.0, 100.0, 4, 32, 128,
                      work_end_ns=end, round=r, group="g")

    stream = [
        RunStarted(t0, meta),
        ConfigStarted(t0, cid, 0, 1, "Qwen2-1.5B", 1, "fp16", True, 2, group="g"),
        PhaseStarted(t0 + 100 * ms, cid, "decode", 1),
        window(1, t0 + 200 * ms, t0 + 1000 * ms),
        window(2, t0 + 1200 * ms, t0 + 2600 * ms),
        ConfigFinished(t0 + 2600 * ms, cid, ok=True),
    ]
    # Samples arrive in batches of 100 ms, after the windows they cover (as live).
    batches = [Samples(t0 + b * 100 * ms,
                       [(t, 0, 200.0, 200.0, float("nan"), 1000.0, 50.0, 40.0, 1.0, 1)
                        for t in times if t0 + (b - 1) * 100 * ms <= t < t0 + b * 100 * ms])
               for b in range(1, 31)]
    return session, [*stream, *batches]


def test_a_hole_in_the_samples_of_a_measured_window_is_a_warning_on_its_row(tmp_path: Path) -> None:
    from wattscope import analysis, export

    path = tmp_path / "r.wattscope"
    session, stream = _stream_with_a_hole(path)
    for ev in stream:
        session._emit(ev)
    session._check_windows(final=True)
    session._finalise("completed", "")
    warnings = [w for w in session.state.snapshot(now_ns()).warnings if w.source == "sampler"]
    assert [w.message for w in warnings] == [
        "Qwen2-1.5B/b1/fp16: the sampler stalled: no sample for 0.61 s (more than 0.25 s) in a measured "
        "decode window; the row's cross-check is flagged"
    ]
    rec = wattscope.load(path)
    assert list(rec.warnings["config_id"][rec.warnings["source"] == "sampler"]) == ["Qwen2-1.5B/b1/fp16"]
    assert rec.windows["sampler_stall"].notna().tolist() == [False, True]  # the recording's own verdict
    cross = analysis.crosscheck_table([rec])
    assert cross[["phase", "windows", "stalled_windows"]].values.tolist() == [["decode", 2, 1]]
    assert "(sampler stalled in 1)" in export.export([rec], "md", "crosscheck")


@pytest.mark.process
def test_a_sigstopped_sampler_is_reported_on_the_rows_it_blinded(tmp_path: Path) -> None:
    from wattscope import analysis
    from wattscope.headless import run_live

    out = tmp_path / "r.wattscope"
    cfg = _write_config(tmp_path, FAST.replace("rate_hz = 1000", "rate_hz = 100"))
    session = Session(config.load(cfg), out, sim=True)
    result: list[str] = []
    runner = threading.Thread(target=lambda: result.append(run_live(session, io.StringIO())))
    runner.start()
    deadline = time.monotonic() + 90
    while not any(w.role == "measure" for ws in list(session._windows.values()) for w in ws):
        assert time.monotonic() < deadline and runner.is_alive()
        time.sleep(0.02)
    sampler = next(p for p in mp.active_children() if p.name == "wattscope-sampler")
    assert sampler.pid is not None
    os.kill(sampler.pid, signal.SIGSTOP)
    time.sleep(1.5)
    os.kill(sampler.pid, signal.SIGCONT)
    runner.join(120)
    assert result == ["completed"]
    rec = wattscope.load(out)
    stalls = rec.warnings[rec.warnings["source"] == "sampler"]
    assert len(stalls) >= 1 and stalls["config_id"].notna().all()
    assert stalls["message"].str.contains("the sampler stalled: no sample for 1.").any()
    cross = analysis.crosscheck_table([rec])
    flagged = set(cross.loc[cross["stalled_windows"] > 0, "config_id"])
    assert flagged == set(stalls["config_id"])  # the live warning and the recording agree
