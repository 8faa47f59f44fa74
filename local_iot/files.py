"""Files and directories of a state dir with explicit modes, whatever the umask: directories 0700, files 0600."""

from __future__ import annotations

import os
from pathlib import Path

from device_sim.fileio import atomic_write

__all__ = ["private_dir", "write_private"]


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and set it to 0700; an existing directory is set to 0700 too."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: str | bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the moment the file exists. ``durable=False``: no
    fsync (for derived files rewritten often, see ``atomic_write``)."""
    atomic_write(path, data, mode=0o600, durable=durable)
