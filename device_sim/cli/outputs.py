"""Output locations (``--out``, ``--state-dir``, ``--report-dir``), checked before any work starts.

Rules (docs/device.md and docs/fleet.md, "Output locations"):

* ``--out FILE``: its directory must exist and be writable (the part file, and the file once verified, go there);
  a missing directory is refused, never created, so a typo does not scatter downloads; ``FILE`` must not be a
  directory.
* ``--state-dir DIR`` and ``--report-dir DIR``: an existing one must be a writable directory; a missing one is
  created by the run, so its parent must exist and be writable.

"Writable" is probed by creating and removing a temporary file, so read-only mounts, ACLs and root's exemption
from permission bits all give the true answer. Every error is a ``BadArguments`` (one line, exit code 2) that
names the option.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from device_sim.cli.errors import BadArguments

__all__ = ["check_output_dir", "check_output_file", "ensure_output_dir"]


def _probe(directory: Path, *, what: str, option: str) -> None:
    if not directory.exists():
        raise BadArguments(
            f"{option}: the {what} {directory} does not exist: create it first (mkdir -p {directory}) "
            f"or pass another {option}"
        )
    if not directory.is_dir():
        raise BadArguments(f"{option}: the {what} {directory} is not a directory: pass another {option}")
    try:
        fd, name = tempfile.mkstemp(prefix=".device-sim-write-check-", dir=directory)
    except OSError as exc:
        raise BadArguments(
            f"{option}: cannot write to the {what} {directory}: {exc.strerror}: make it writable or pass another "
            f"{option}"
        ) from None
    os.close(fd)
    os.unlink(name)


def check_output_file(path: Path, option: str) -> None:
    """``path`` can be written: its directory exists and is writable, and ``path`` is not a directory."""
    target = path.absolute()
    if target.is_dir():
        raise BadArguments(f"{option}: {path} is a directory: give a file name")
    _probe(target.parent, what="directory", option=option)


def check_output_dir(path: Path, option: str, what: str) -> None:
    """``path`` is a writable directory, or can be created in an existing writable parent."""
    target = path.absolute()
    if target.exists():
        _probe(target, what=what, option=option)
    else:
        _probe(target.parent, what=f"parent directory of the {what}", option=option)


def ensure_output_dir(path: Path, option: str, what: str) -> None:
    """``check_output_dir``, then create the directory (its parent exists): the run's results have a home."""
    check_output_dir(path, option, what)
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise BadArguments(f"{option}: cannot create the {what} {path}: {exc.strerror}") from None
