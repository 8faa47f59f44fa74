"""One run per manifest: an ``fcntl`` lock on ``<manifest>.lock`` held for the whole command.

How this works: the lock file lies next to the manifest and holds a JSON line naming the holder (pid, command,
start time). ``flock(LOCK_EX | LOCK_NB)`` is the truth: the kernel drops it when the holder exits, however it
exits, so a lock file left by a dead process (kill -9, power loss) is simply taken over (with a log line naming
the dead pid). A second command on the same manifest fails at once with ``ManifestLocked`` saying who holds it,
before it reads the account or creates anything. On release the holder removes the file while still holding the
lock; a waiter that locked the removed file notices (its inode is no longer the path's) and tries again.

Readers never lock: ``load_manifest`` (device-sim) reads the manifest while a run holds the lock, and the manifest
is always replaced atomically, so it sees the state before or after a step.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .errors import ManifestLocked, OutputError

log = logging.getLogger(__name__)


def lock_path(manifest_path: str | os.PathLike[str]) -> Path:
    """``<manifest>.lock``."""
    p = Path(manifest_path)
    return p.with_name(p.name + ".lock")


@dataclass(frozen=True, kw_only=True, slots=True)
class LockHolder:
    pid: int | None
    command: str
    started_at: str

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "another process"
        what = f" ({self.command} started at {self.started_at})" if self.command else ""
        return who + what


def _read_holder(fd: int) -> LockHolder:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    return LockHolder(
        pid=pid if isinstance(pid, int) else None,
        command=str(data.get("command", "")),
        started_at=str(data.get("started_at", "")),
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManifestLock:
    """``with ManifestLock(path, command="provisioner up"):`` holds ``<path>.lock`` (see the module docstring)."""

    def __init__(self, manifest_path: str | os.PathLike[str], *, command: str) -> None:
        self.manifest_path = Path(manifest_path)
        self.path = lock_path(manifest_path)
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise OutputError(
                    f"cannot create the lock file {self.path}: {e.strerror}",
                    hint="make the manifest's directory writable or pass another --manifest",
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ManifestLocked(
                    f"manifest {self.manifest_path} is in use by {holder.describe()}",
                    hint="wait for it to finish (or stop it), or use another --manifest",
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous.pid is not None and previous.pid != os.getpid() and not _alive(previous.pid):
                log.warning("taking over the lock of %s: pid %d is no longer running", self.path, previous.pid)
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            text = json.dumps({"pid": os.getpid(), "command": self.command, "started_at": now}) + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ManifestLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


__all__ = ["LockHolder", "ManifestLock", "lock_path"]
