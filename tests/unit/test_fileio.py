"""``device_sim.fileio.atomic_write``: all or nothing, exact modes whatever the umask, no temporary file left."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from device_sim.fileio import atomic_write


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_bytes_text_and_writer_replace_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"one")
    assert path.read_bytes() == b"one"
    atomic_write(path, "twö")
    assert path.read_text(encoding="utf-8") == "twö"
    atomic_write(path, lambda f: f.write(b"three"))
    assert path.read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_an_explicit_mode_holds_under_umask_000(tmp_path: Path, open_umask: None) -> None:
    atomic_write(tmp_path / "key", b"secret", mode=0o600)
    atomic_write(tmp_path / "plain", b"x")
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666  # a normal file follows the umask


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def broken(f: BinaryIO) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_an_unwritable_directory_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        atomic_write(tmp_path / "missing" / "f", b"x")


def test_durable_false_replaces_atomically_without_any_fsync(
    tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "derived"
    path.write_bytes(b"old")
    old_inode = path.stat().st_ino
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    atomic_write(path, "new", mode=0o600, durable=False)
    assert synced == []
    assert path.read_bytes() == b"new"
    assert path.stat().st_ino != old_inode  # a new file renamed over the old one, not the old one rewritten
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["derived"]
    atomic_write(path, "durable", mode=0o600)
    assert len(synced) == 2  # the default still syncs the file and its directory
