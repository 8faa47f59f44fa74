"""Output locations (``--manifest``, ``--certs-dir``), checked before any work and before any AWS call.

Rules (docs/provisioner.md, "Output locations"):

* the manifest's directory must exist and be writable (the manifest, its journal and its lock file go there);
  a missing directory is refused, never created: a typo in ``--manifest`` should not scatter runs;
* an existing manifest must be a regular file;
* ``--certs-dir`` is created by the run (it holds only the run's files), but its parent must exist; an existing
  one must be a writable directory.

"Writable" is probed by creating and removing a temporary file, so read-only mounts, ACLs and root's exemption
from permission bits all give the true answer.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputError


def _probe(directory: Path, *, what: str, option: str) -> None:
    if not directory.exists():
        raise OutputError(
            f"{what} directory {directory} does not exist",
            hint=f"create it first (mkdir -p {directory}) or pass another {option}",
        )
    if not directory.is_dir():
        raise OutputError(f"{what} directory {directory} is not a directory", hint=f"pass another {option}")
    try:
        fd, name = tempfile.mkstemp(prefix=".provisioner-write-check-", dir=directory)
    except OSError as e:
        raise OutputError(
            f"cannot write to the {what} directory {directory}: {e.strerror}",
            hint=f"make it writable or pass another {option}",
        ) from e
    os.close(fd)
    os.unlink(name)


def check_manifest_location(path: Path) -> None:
    """The manifest's directory exists and is writable; an existing manifest is a regular file."""
    if path.exists() and not path.is_file():
        raise OutputError(f"manifest {path} is not a regular file", hint="pass another --manifest")
    _probe(path.absolute().parent, what="manifest", option="--manifest")


def check_certs_dir(certs_dir: Path) -> None:
    """``certs_dir`` is a writable directory, or can be created in an existing writable parent."""
    target = certs_dir.absolute()
    if target.exists():
        _probe(target, what="certificates", option="--certs-dir")
    else:
        _probe(target.parent, what="certificates' parent", option="--certs-dir")


def check_outputs(manifest_path: Path | None, certs_dir: Path | None = None) -> None:
    """Every output location of a command, before anything else happens."""
    if manifest_path is not None:
        check_manifest_location(manifest_path)
    if certs_dir is not None:
        check_certs_dir(certs_dir)


__all__ = ["check_certs_dir", "check_manifest_location", "check_outputs"]
