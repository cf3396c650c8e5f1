"""What a recording says about the code that made it."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import wattscope
from wattscope import provenance

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.process  # source() asks git
def test_the_version_has_one_home_and_the_meta_reports_the_running_code() -> None:
    assert wattscope.__version__ == provenance.source()["version"] == provenance.package_versions()["wattscope"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]  # no second copy
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "wattscope.version.__version__"}


@pytest.mark.process
def test_a_checkout_records_its_commit_and_whether_it_had_changes() -> None:
    src = provenance.source()
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        assert src["git_commit"] is None and src["git_dirty"] is None
        return
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert src["git_commit"] == head and re.fullmatch(r"[0-9a-f]{40}", head)
    assert isinstance(src["git_dirty"], bool)


def test_outside_a_checkout_there_is_no_commit(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "site" / "wattscope" / "provenance.py"
    fake.parent.mkdir(parents=True)
    monkeypatch.setattr(provenance, "__file__", str(fake))
    assert provenance.source() == {"version": wattscope.__version__, "git_commit": None, "git_dirty": None}
