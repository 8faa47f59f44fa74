"""Small shared helpers for files and sizes, used by device_sim, provisioner and local_iot alike.

``atomic_write`` replaces a file all or nothing (a temporary file in the same directory, fsync, rename, fsync of the
directory), so a crash or Ctrl-C leaves the old file or the new one, never half of one. ``durable=False`` skips
both fsyncs (readers still see the old file or the new one, never half of one; after a power loss or OS crash the
file may be old or empty): for derived files that are rebuilt anyway and written too often for an fsync each.
``parse_size`` reads the sizes users type (``4096``, ``4KiB``, ``1MiB``, ``1.5MB``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "parse_size"]


def atomic_write(
    path: Path,
    data: bytes | str | Callable[[BinaryIO], None],
    *,
    mode: int | None = None,
    durable: bool = True,
) -> None:
    """Create or replace ``path`` with ``data`` (bytes, UTF-8 text, or a function that writes to a binary file).

    ``mode`` None: a normal file (0666 less the umask). A mode is applied exactly, whatever the umask (0600 for
    private keys and state). ``durable=False``: no fsync of the file nor of the directory (still an atomic rename:
    readers never see half a file; only a power loss or OS crash may lose it). Raises ``OSError``; the temporary
    file never stays behind, even on KeyboardInterrupt.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
    try:
        with open(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    with contextlib.suppress(OSError):  # the rename itself is durable once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 10**6,
    "mb": 10**6,
    "mib": 1024**2,
    "g": 10**9,
    "gb": 10**9,
    "gib": 1024**3,
    "t": 10**12,
    "tb": 10**12,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``4096``, ``4KiB``, ``1MiB``, ``1.5MB`` -> bytes (a whole, positive number). ValueError with a hint."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: use bytes or a unit like 4KiB, 1MiB, 500KB")
    size = float(m.group(1)) * _UNITS[unit]
    if size != int(size) or size <= 0:
        raise ValueError(f"{text!r} is not a positive whole number of bytes")
    return int(size)
