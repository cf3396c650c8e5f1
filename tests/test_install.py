"""An install that works outside the checkout: package data, bundled configs by name,
`wattscope init`, files with the user's umask, the app's export folder, optional extras.

The built wheel itself is installed into a fresh venv and run from an empty folder by
.ci/run; these tests hold the parts it relies on."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from wattscope import cli, config, export, extras, resources
from wattscope.config_reference import reference_markdown, starter_config
from wattscope.errors import UsageError
from wattscope.extras import MissingExtra
from wattscope.files import export_folder, new_file_mode, write_new
from wattscope.recording import load

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "wattscope" / "data"


@pytest.fixture
def umask() -> Iterator[None]:
    """The process's umask set to 027 for the test (group may read, others nothing)."""
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


# ------------------------------------------------------------------- package data


def test_every_data_file_is_package_data() -> None:
    """The wheel carries what pyproject's package-data names: every file under
    wattscope/data must match one of its patterns."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["wattscope"]
    files = [p.relative_to(ROOT / "wattscope").as_posix() for p in DATA.rglob("*") if p.is_file()]
    assert sorted(files) == ["data/configs/quick.toml", "data/configs/seed.toml", "data/h100-seed.wattscope"]
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) for pat in patterns), f


def test_checkout_paths_are_the_package_files() -> None:
    """configs/ and recordings/h100-seed.wattscope in a checkout are the bundled files."""
    assert (ROOT / "configs" / "quick.toml").samefile(DATA / "configs" / "quick.toml")
    assert (ROOT / "recordings" / "h100-seed.wattscope").samefile(resources.bundled_recording())


def test_bundled_recording_loads() -> None:
    rec = load(resources.bundled_recording())
    assert rec.meta["gpu"]["name"].startswith("NVIDIA H100")
    assert rec.status == "completed"
    # Every row its own config asked for finished, with an interval on each ratio.
    from wattscope import config, metrics

    sweep = config.parse(rec.meta["sweep"]["text"], "bundled.toml")
    assert len(rec.results) == len(sweep.configs) and rec.results["ok"].all()
    for row in rec.results.to_dict("records"):
        if not metrics.is_baseline(row["precision"]):
            assert all(metrics.ratio_value(row, name).half_width > 0 for name in metrics.RATIO_NAMES)


def test_bundled_configs_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resources.bundled_config_names() == ["quick", "seed"]
    assert resources.config_path("quick").samefile(DATA / "configs" / "quick.toml")
    assert config.load(resources.config_path("seed")).name == "seed"
    # A file name (a suffix or a folder in it) is always a file, even when it does not exist.
    assert resources.config_path("quick.toml") == Path("quick.toml")
    assert resources.config_path("./quick") == Path("./quick")
    # A file in the current folder wins over the bundled config of the same name.
    (tmp_path / "quick").write_text('name = "mine"\n[[matrix]]\nmodels = ["synthetic:Qwen2-1.5B"]\nbatches = [1]\nprecisions = ["fp16"]\n')
    assert config.load(resources.config_path("quick")).name == "mine"
    with pytest.raises(UsageError, match="nope: no such config file or bundled config; bundled: quick, seed"):
        resources.config_path("nope")


@pytest.mark.process
def test_run_a_bundled_config_by_name_from_an_empty_folder(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "wattscope", "run", "quick", "--sim", "--headless"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = list((tmp_path / "recordings").iterdir())
    assert len(written) == 1 and re.fullmatch(r"quick-\d{8}-\d{6}-sim\.wattscope", written[0].name)
    assert [r["precision"] for _, r in load(written[0]).results.iterrows()] == ["fp16", "int8", "nf4"]


# ------------------------------------------------------------------------- init


def test_starter_config_is_every_default_with_its_meaning() -> None:
    text = starter_config()
    sweep = config.parse(text, "wattscope.toml")
    assert sweep.name == "wattscope"
    assert (sweep.protocol, sweep.sampler, sweep.bitsandbytes, sweep.host, sweep.sim) == (
        config.Protocol(), config.Sampler(), config.BitsAndBytes(), config.Host(), config.Sim())
    assert [c.config_id for c in sweep.configs] == ["Qwen2-1.5B/b1/fp16", "Qwen2-1.5B/b1/int8", "Qwen2-1.5B/b1/nf4"]
    lines = text.splitlines()
    for section, (_, keys) in config.SECTIONS.items():
        at = lines.index(f"[{section}]")
        for key, spec in keys.items():
            i = next(i for i in range(at, len(lines)) if lines[i].startswith(f"{key} = "))
            assert lines[i - 1] == f"# {spec.meaning}. Allowed: {spec.allowed}."


def test_init_writes_once_with_the_umask(tmp_path: Path, umask: None, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.toml"
    assert cli.main(["init", str(path)]) == 0
    assert path.read_text() == starter_config()
    assert path.stat().st_mode & 0o777 == 0o640
    path.write_text("edited\n")
    assert cli.main(["init", str(path)]) == 2
    assert "mine.toml: already exists; not overwritten" in capsys.readouterr().err
    assert path.read_text() == "edited\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.toml"]  # no temporary file left


def test_write_new_refuses_a_path_taken_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.toml"
    real_link = os.link

    def race(src: str, dst: str) -> None:
        Path(dst).write_text("theirs")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", race)
    with pytest.raises(UsageError, match="already exists"):
        write_new(path, "mine")
    assert path.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["x.toml"]


def test_readme_config_reference_is_generated() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- config reference: generated by wattscope.config_reference -->\n", "<!-- end of config reference -->"
    assert start in readme and end in readme
    assert readme.split(start, 1)[1].split(end, 1)[0] == reference_markdown()


def test_reference_lists_every_key_with_its_default() -> None:
    table = reference_markdown()
    assert "| `protocol.max_warmup_rounds` | `4` |" in table
    assert "| `protocol.cooldown_s` | `3.0` |" in table
    assert "| `run.gpus` | `[0]` |" in table
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == 1 + sum(len(keys) for _, keys in config.SECTIONS.values()) + len(config.MATRIX)


# ------------------------------------------------------------------ written files


def test_exports_follow_the_umask(tmp_path: Path, umask: None) -> None:
    out = export.write_atomic(tmp_path / "t.md", "x")
    assert out.stat().st_mode & 0o777 == 0o640 == new_file_mode()


def test_export_folder_beside_the_users_recording(tmp_path: Path) -> None:
    rec = tmp_path / "r.wattscope"
    assert export_folder(rec) == (tmp_path, "")


def test_export_folder_of_the_bundled_recording_is_the_current_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder, why = export_folder(resources.bundled_recording())
    assert folder == tmp_path
    assert why == "the recording's folder is part of the installed package"


def test_export_folder_not_the_users_is_the_current_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    if os.getuid() == 0:
        os.chown(theirs, 12345, -1)  # root may write anywhere: the folder is someone else's
    else:
        theirs.chmod(0o555)
    try:
        assert export_folder(theirs / "r.wattscope") == (here, f"{theirs} is not a folder of yours to write in")
    finally:
        theirs.chmod(0o755)


# ------------------------------------------------------------------------ extras


def test_parquet_without_its_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # pandas itself imports pyarrow where it is installed, so the extra's module is
    # replaced by one that is absent here (.ci/run checks a real install without pyarrow).
    monkeypatch.setitem(extras.EXTRAS, "parquet", "wattscope_absent_module")
    rec = str(resources.bundled_recording())
    with pytest.raises(MissingExtra, match=r"pip install 'wattscope\[parquet\]'"):
        export.export([rec], fmt="parquet", table="phases")
    assert cli.main(["export", rec, "--format", "parquet", "--table", "phases", "-o", str(tmp_path / "p.parquet")]) == 1
    err = capsys.readouterr().err
    assert err == ("wattscope: error: Parquet export needs wattscope_absent_module, which this install lacks: "
                   "pip install 'wattscope[parquet]'\n")
    assert cli.main(["export", rec, "--traces", "--format", "csv", "-o", str(tmp_path)]) == 1
    assert "raw trace export needs wattscope_absent_module" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # The text exports are the core install's.
    header = str(export.export([rec], fmt="csv", table="phases")).splitlines()[0].split(",")
    assert {"model", "batch", "precision", "prefill_energy_j"} <= set(header)
