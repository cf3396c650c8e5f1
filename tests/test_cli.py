"""The command line: every error meant for the user ends in one line on stderr and the
exit code its class carries, mapped in one place (``cli.main``); never a traceback."""

from __future__ import annotations

import argparse
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from wattscope import cli
from wattscope.errors import EXIT_BAD_INPUT, EXIT_FAILED, WattscopeError

ROOT = Path(__file__).resolve().parent.parent
SEED_REC = ROOT / "recordings" / "h100-seed.wattscope"
SEED_CSV = ROOT / "tests" / "data" / "seed_rtx_pro_6000.csv"


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.process
def test_export_traces_in_a_table_format_is_a_bad_input_not_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "wattscope", "export", str(SEED_REC), "--traces", "--format", "md",
         "-o", str(tmp_path / "traces")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr == "wattscope: error: unknown trace format 'md' for raw traces; allowed: csv, parquet\n"
    assert proc.stdout == ""
    assert not (tmp_path / "traces").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "{tmp}/missing.toml", "--sim", "--headless"], "missing.toml: config file not found"),
        (["replay", "{tmp}/missing.wattscope", "--headless"], "missing.wattscope: recording not found"),
        (["replay", str(SEED_REC), "--headless", "--speed", "0"], "--speed 0 is not allowed"),
        (["export", str(ROOT / "README.md")], "README.md: not a wattscope recording"),
        (["export", "{tmp}/bad.csv"], "bad.csv: line 1, column 1: unknown column"),
        (["export", str(SEED_REC), "--format", "parquet", "-o", "{tmp}/x.parquet"], "parquet holds one table per file"),
        (["export", str(SEED_CSV), "--traces", "--format", "csv", "-o", "{tmp}"], "an imported table has no raw traces"),
        (["export", str(SEED_REC), SEED_REC.as_posix(), "--traces", "--format", "csv"], "--traces exports one recording"),
        (["export", str(SEED_REC), "--format", "parquet", "--table", "phases"], "is binary; give an output file"),
        (["compare", str(SEED_REC), "{tmp}/missing.csv"], "missing.csv: table not found"),
        (["export", str(SEED_REC), "-o", "{tmp}/a_file/x.md"], "a_file"),
        (["export", "{tmp}/cut.wattscope.xz", "-o", "{tmp}/x.md"], "cut.wattscope.xz: damaged compressed recording"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.csv").write_text("modle,batch\nx,1\n")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "cut.wattscope.xz").write_bytes(lzma.compress(SEED_REC.read_bytes(), preset=0)[:4096])
    before = sorted(tmp_path.iterdir())
    code, out, err = _main(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == EXIT_BAD_INPUT, err
    assert err.startswith("wattscope: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert needle in err
    assert out == ""
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_a_missing_gpu_is_a_failed_run_with_the_sim_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from wattscope.session import Session
    from wattscope.telemetry import NvmlUnavailable

    def no_gpu(self: Session) -> None:
        raise NvmlUnavailable("NVML is unavailable: the NVIDIA driver is not loaded")

    monkeypatch.setattr(Session, "start", no_gpu)
    cfg = str(ROOT / "configs" / "quick.toml")
    code, _, err = _main(capsys, "run", cfg, "--headless", "-o", str(tmp_path / "r.wattscope"))
    assert code == EXIT_FAILED
    assert err == (f"wattscope: error: NVML is unavailable: the NVIDIA driver is not loaded; "
                   f"`wattscope run {cfg} --sim` runs the pipeline on a simulated GPU\n")


class _Crashed(WattscopeError):
    exit_code = 7


@pytest.mark.parametrize(("error", "code"), [
    (WattscopeError("plain"), EXIT_BAD_INPUT),
    (_Crashed("a new error class needs no CLI change"), 7),
])
def test_main_maps_any_wattscope_error_to_its_code_and_one_line(
    error: WattscopeError, code: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def raises(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_compare", raises)  # the parser is built inside main
    got, _, err = _main(capsys, "compare", "a", "b")
    assert got == code
    assert err == f"wattscope: error: {error}\n"


def test_a_multi_line_message_is_printed_on_one_line() -> None:
    assert WattscopeError("a.toml: not valid TOML:\n  Expected '=' (at line 1)").message == \
        "a.toml: not valid TOML: Expected '=' (at line 1)"


@pytest.mark.parametrize("name", [
    "wattscope.config.ConfigError", "wattscope.recording.RecordingError", "wattscope.tables.TableError",
    "wattscope.analysis.SourceError", "wattscope.export.ExportError", "wattscope.errors.UsageError",
    "wattscope.telemetry.nvml.NvmlUnavailable", "wattscope.architectures.SyntheticModelError",
    "wattscope.bench.workload.WorkloadError",
])
def test_every_user_facing_error_has_the_one_base(name: str) -> None:
    import importlib

    module, cls = name.rsplit(".", 1)
    error = getattr(importlib.import_module(module), cls)
    assert issubclass(error, WattscopeError)
    expected = EXIT_FAILED if cls in ("NvmlUnavailable", "WorkloadError") else EXIT_BAD_INPUT
    assert error("x").exit_code == expected
