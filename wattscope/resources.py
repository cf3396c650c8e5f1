"""Files that ship inside the package: the bundled recording and the example configs.

They live in ``wattscope/data/`` and are found with ``importlib.resources``, so an
installed wheel finds them wherever it was installed; a checkout reaches the same files
through ``configs/`` and ``recordings/h100-seed.wattscope``, which link into that folder.
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path

from wattscope.errors import UsageError

RECORDING = "h100-seed.wattscope"
_CONFIGS = "configs"
# as_file() extracts a resource only when the package is not on a plain file system (a
# zip); the extracted copy must outlive the call, so it is released when the process ends.
_extracted = ExitStack()
atexit.register(_extracted.close)


def _path(*parts: str) -> Path:
    resource = files("wattscope").joinpath("data", *parts)
    if not resource.is_file():
        raise UsageError(f"wattscope/data/{'/'.join(parts)}: missing from this install (reinstall wattscope)")
    return _extracted.enter_context(as_file(resource))


def bundled_recording() -> Path:
    """The real H100 recording that ``wattscope demo`` replays."""
    return _path(RECORDING)


def bundled_config_names() -> list[str]:
    """The names of the example configs (``quick``, ``seed``), sorted."""
    folder = files("wattscope").joinpath("data", _CONFIGS)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def bundled_config(name: str) -> Path:
    """The example config called ``name`` (``quick``, ``seed``)."""
    if name not in bundled_config_names():
        raise UsageError(f"{name}: no such config file or bundled config; bundled: {', '.join(bundled_config_names())}")
    return _path(_CONFIGS, f"{name}.toml")


def config_path(arg: str) -> Path:
    """What ``wattscope run ARG`` reads: the file ARG when it exists or looks like a file
    name (a folder or a suffix in it), else the bundled config of that name, so
    ``wattscope run quick`` works from any folder."""
    p = Path(arg)
    if p.exists() or p.name != arg or p.suffix:
        return p
    return bundled_config(arg)
