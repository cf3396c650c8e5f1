"""How wattscope writes the files a user keeps: with the user's umask, never over an
existing file unless asked, and into a folder that is the user's.

Temporary files made with ``tempfile.mkstemp`` are private (0600) by design; a file
renamed or linked into place from one keeps that mode unless it is set back to what
the user's umask gives a new file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from wattscope.errors import UsageError


def _umask() -> int:
    # Linux says the umask in /proc without changing it; elsewhere it can only be read by
    # setting it, which another thread creating a file at that instant would see.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the user's umask (0644 under 022)."""
    return 0o666 & ~_umask()


def write_new(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, which must not exist, in one step: the file appears
    complete or not at all. An existing file is a UsageError (exit 2)."""
    if path.exists():
        raise UsageError(f"{path}: already exists; not overwritten (choose another path)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, path)  # fails if the path was taken meanwhile; never replaces it
        except FileExistsError:
            raise UsageError(f"{path}: already exists; not overwritten (choose another path)") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def export_folder(recording: Path) -> tuple[Path, str]:
    """Where the app's export of ``recording`` goes: beside it when its folder is the
    user's (owned and writable), else the current folder. The second value says why
    the current folder was chosen ("" when beside the recording)."""
    folder = recording.absolute().parent  # as the user named it, for the message
    try:
        own = folder.stat().st_uid == os.getuid() and os.access(folder, os.W_OK)
    except OSError:
        own = False
    if _in_package(recording.resolve().parent):
        return Path.cwd(), "the recording's folder is part of the installed package"
    if own:
        return folder, ""
    return Path.cwd(), f"{folder} is not a folder of yours to write in"


def _in_package(folder: Path) -> bool:
    """The installed package's own folder (the bundled recording's): never written to."""
    package = Path(__file__).resolve().parent
    return folder == package or package in folder.parents
