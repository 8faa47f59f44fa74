"""A directory nobody can create files in, root included: the fixture the output-location tests share."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["read_only_dir"]


def _writable(directory: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody (root included) can create files in."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    mounted = False
    if _writable(directory):  # root: permission bits do not apply; a read-only tmpfs does
        done = subprocess.run(
            [shutil.which("mount") or "mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(directory)],
            capture_output=True,
        )
        mounted = done.returncode == 0
        if not mounted or _writable(directory):
            pytest.skip(f"cannot make a read-only directory here: {done.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        if mounted:
            subprocess.run(["umount", str(directory)], check=True)
        directory.chmod(0o755)
