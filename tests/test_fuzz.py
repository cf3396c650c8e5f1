"""Fuzzing the command line with what users and adversaries hand it: random configs,
random CSV tables and damaged recordings (truncated, bit-flipped, foreign SQLite,
random bytes). Whatever comes in, a command ends with a documented exit code, never an
escaped exception or a traceback on stderr, writes no control sequence to the terminal,
and leaves nothing half-written at its output path.

Everything runs ``cli.main`` in this process; a run that would start the sampler and the
runner is stopped at the session (the fast layer starts no process), and
``test_random_valid_configs_run_simulated`` runs a few real ``--sim`` sweeps as processes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wattscope import cli
from wattscope.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED
from wattscope.recording import Recorder

from synthetic_run import event_stream

ROOT = Path(__file__).resolve().parent.parent
SEED_CSV = Path(__file__).parent / "data" / "seed_rtx_pro_6000.csv"
DOCUMENTED = {0, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED}
RAW = ("\x1b", "\x07", "\x9b", "\u202e")
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    # Hypothesis runs many examples per test: each gets a fresh folder (a function-scoped
    # tmp_path would be shared between them).
    with tempfile.TemporaryDirectory(prefix="wattscope-fuzz-") as d:
        yield Path(d)


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _check(code: int, out: str, err: str, allowed: set[int] = DOCUMENTED) -> None:
    assert code in allowed, (code, err)
    assert "Traceback" not in err, err
    if code:
        assert err.startswith("wattscope: error: ") and err.count("\n") == 1, err
    for text in (out, err):
        assert not any(c in text for c in RAW), text


def _nothing_at(path: Path) -> None:
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith((path.name, f".{path.name}"))]
    assert not leftovers, leftovers


# ----------------------------------------------------------------------------- values

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
names = st.one_of(
    texts,
    st.sampled_from(["synthetic:Qwen2-1.5B", "Qwen/Qwen2-1.5B", "synthetic:Yi-1.5-6B", "../../x", "/abs", "=1+2",
                     "a\x1b]0;t\x07", "[/b]", "|<b>", "synthetic:", ""]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, 3, 0.01, 0.5, 1e9, -1]),
)
scalars = st.one_of(numbers, texts, st.booleans())
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(v), repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in v) + '"'
    assert isinstance(v, list)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


PROTOCOL_KEYS = ["prompt_tokens", "decode_steps", "warmup_calls", "min_window_s", "min_calls", "max_warmup_rounds",
                 "min_rounds", "max_rounds", "ci_target", "max_row_s", "engine", "cooldown_s", "idle_s",
                 "precision_order", "seed", "repeats", "bogus"]


@st.composite
def configs(draw: st.DrawFn) -> str:
    lines = [f"name = {_toml_value(draw(names))}"] if draw(st.booleans()) else []
    protocol = draw(st.dictionaries(st.sampled_from(PROTOCOL_KEYS), values, max_size=4))
    lines.append("[protocol]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in protocol.items()]
    if draw(st.booleans()):
        lines += ["[sampler]", f"rate_hz = {_toml_value(draw(numbers))}",
                  f"gpus = {_toml_value(draw(st.lists(numbers, max_size=2)))}"]
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[matrix]]")
        lines.append(f"models = {_toml_value(draw(st.lists(names, max_size=2)))}")
        lines.append(f"batches = {_toml_value(draw(st.lists(numbers, max_size=2)))}")
        lines.append(f"precisions = {_toml_value(draw(st.lists(st.sampled_from(['fp16', 'int8', 'nf4', 'bf16', 'fp8', '']), max_size=3)))}")
    text = "\n".join(lines) + "\n"
    # Sometimes not TOML at all.
    return draw(st.one_of(st.just(text), texts, st.just(text[: draw(st.integers(0, len(text)))])))


class _NoProcesses:
    """Stands in for the session: a valid config would start the sampler and the runner
    here, which the process layer does for real."""

    def __init__(self, sweep: object, output: Path, sim: bool = False) -> None:
        self.output = output

    def start(self) -> None:
        pass


@FUZZ
@given(text=configs())
def test_random_configs_fail_cleanly(text: str) -> None:
    with _workdir() as d, pytest.MonkeyPatch.context() as mp:
        mp.setattr("wattscope.session.Session", _NoProcesses)
        mp.setattr("wattscope.headless.run_live", lambda session: "completed")
        cfg, out = d / "c.toml", d / "out" / "r.wattscope"
        cfg.write_text(text, encoding="utf-8")
        code, o, e = _main("run", str(cfg), "--sim", "--headless", "-o", str(out))
        _check(code, o, e, {0, EXIT_BAD_INPUT})
        if code:
            assert not out.parent.exists() or not any(out.parent.iterdir())


# ----------------------------------------------------------------------------- tables

HEADER = ["model", "batch", "precision", "prefill_energy_j", "decode_energy_j", "decode_tok_s"]
cells = st.one_of(texts, numbers.map(str), st.sampled_from(["fp16", "nf4", "INT8", "1", "-0.5", "=1+2", "", '"a\nb"']))


@st.composite
def tables(draw: st.DrawFn) -> str:
    header = draw(st.one_of(st.just(HEADER), st.lists(st.sampled_from(HEADER + ["tdp_w", "decode_steps", "x"]),
                                                        max_size=8)))
    rows = draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header) + 1), max_size=5))
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    return draw(st.one_of(st.just(text), st.just(text[: draw(st.integers(0, len(text)))])))


@FUZZ
@given(text=tables(), fmt=st.sampled_from(["md", "csv", "json", "latex", "parquet"]),
       table=st.sampled_from(["all", "phases", "power", "findings"]))
def test_random_tables_export_or_fail_cleanly(text: str, fmt: str, table: str) -> None:
    with _workdir() as d:
        src, out = d / "t.csv", d / "o" / "t.out"
        src.write_text(text, encoding="utf-8")
        out.parent.mkdir()
        code, o, e = _main("export", str(src), "--format", fmt, "--table", table, "-o", str(out))
        _check(code, o, e, {0, EXIT_BAD_INPUT})
        if code:
            _nothing_at(out)
        code, o, e = _main("compare", str(src), str(SEED_CSV), "--format", "text")
        _check(code, o, e, {0, EXIT_BAD_INPUT})


# ------------------------------------------------------------------------- recordings


@functools.cache
def _good_recording() -> bytes:
    """The undamaged recording the damage starts from (held as bytes: a fixture argument
    would be printed whole with every example hypothesis reports)."""
    with _workdir() as d:
        rec = Recorder(d / "r.wattscope")
        for e in event_stream(phase_s=0.2, repeats=2, rate_hz=20.0):
            rec.write(e)
        rec.close()
        return (d / "r.wattscope").read_bytes()


def _foreign_sqlite(path: Path, meta_value: str) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (meta_value,))
    db.commit()
    db.close()


damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=20)),
    st.tuples(st.just("random"), st.binary(max_size=2048)),
    st.tuples(st.just("foreign"), st.sampled_from(["1", "-5", "999", "null", "{", '"1"'])),
)


def _damaged(d: Path, data: bytes, how: tuple[str, object]) -> Path:
    path = d / "r.wattscope"
    kind, arg = how
    if kind == "truncate":
        assert isinstance(arg, float)
        path.write_bytes(data[: int(len(data) * arg)])
    elif kind == "flip":
        assert isinstance(arg, list)
        b = bytearray(data)
        for where, bit in arg:
            i = min(int(where * len(b)), len(b) - 1)
            b[i] ^= 1 << bit
        path.write_bytes(bytes(b))
    elif kind == "random":
        assert isinstance(arg, bytes)
        path.write_bytes(arg)
    else:
        assert isinstance(arg, str)
        _foreign_sqlite(path, arg)
    return path


@FUZZ
@given(how=damage)
@example(how=("foreign", "{"))  # a schema version that is not JSON (found by this test)
@example(how=("truncate", 0.5))
@example(how=("flip", [(0.058973734953136084, 7)]))  # undecodable text in the meta table (found by this test)
def test_damaged_recordings_replay_export_and_compare_cleanly(how: tuple[str, object]) -> None:
    with _workdir() as d:
        path = _damaged(d, _good_recording(), how)
        _check(*_main("replay", str(path), "--headless"), {0, EXIT_BAD_INPUT})
        out = d / "o" / "r.md"
        out.parent.mkdir()
        code, o, e = _main("export", str(path), "-o", str(out))
        _check(code, o, e, {0, EXIT_BAD_INPUT})
        if code:
            _nothing_at(out)
        _check(*_main("export", str(path), "--format", "csv", "--table", "phases"), {0, EXIT_BAD_INPUT})
        _check(*_main("compare", str(path), str(SEED_CSV)), {0, EXIT_BAD_INPUT})


def test_the_undamaged_recording_replays() -> None:
    """The fuzz's starting point is a good recording: damage, not the base, is what fails."""
    with _workdir() as d:
        path = d / "r.wattscope"
        path.write_bytes(_good_recording())
        code, out, err = _main("replay", str(path), "--headless")
        assert code == 0 and "FP16" in out, err


# ------------------------------------------------------------------ real runs (--sim)

TINY = """name = "fuzz"
[protocol]
prompt_tokens = {prompt}
decode_steps = {steps}
min_rounds = 2
max_row_s = 1.0
[[matrix]]
models = {models}
batches = [{batch}]
precisions = {precisions}
"""


@pytest.mark.process
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(prompt=st.integers(1, 64), steps=st.integers(1, 32), batch=st.integers(1, 4),
       models=st.sampled_from([["synthetic:Qwen2-1.5B"], ["synthetic:Qwen2-1.5B", "synthetic:Yi-1.5-6B"]]),
       precisions=st.sampled_from([["fp16", "nf4"], ["int8", "fp16"]]))
def test_random_valid_configs_run_simulated(prompt: int, steps: int, batch: int, models: list[str],
                                            precisions: list[str]) -> None:
    with _workdir() as d:
        cfg, out = d / "c.toml", d / "r.wattscope"
        cfg.write_text(TINY.format(prompt=prompt, steps=steps, batch=batch, models=_toml_value(models),
                                   precisions=_toml_value(precisions)))
        p = subprocess.run([sys.executable, "-m", "wattscope", "run", str(cfg), "--sim", "--headless", "-o", str(out)],
                           capture_output=True, text=True, timeout=240, cwd=ROOT, env={**os.environ, "NO_COLOR": "1"})
        assert "Traceback" not in p.stderr, p.stderr
        assert p.returncode in (0, EXIT_BAD_INPUT), p.stderr
        if p.returncode == 0:
            code, text, err = _main("replay", str(out), "--headless")
            assert code == 0, err
