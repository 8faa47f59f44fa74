"""Files and directories of a state dir with explicit modes, whatever the umask: directories 0700, files 0600."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["private_dir", "write_private"]


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and set it to 0700; an existing directory is set to 0700 too."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the moment the file exists (mkstemp's mode)."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
