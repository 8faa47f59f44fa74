"""Block sinks: where the payload of a download goes (layer 3 of device_sim).

How this works: the engine hands every accepted data block to a sink with ``write(index, offset, data)``. A sink
checks that the block fits the file (index in range, offset = index * block size, length = the block's length, the
last block being the remainder), stores it once (a duplicate returns False and changes nothing) and, when every
block is there, ``finish()`` returns the SHA-256 and size of the whole file.

- ``MemorySink``: the file in a bytearray.
- ``DigestSink``: a streaming SHA-256. In-order blocks are hashed on arrival; an out-of-order block waits in a dict
  until the gap before it fills, so memory does not grow with the file for in-order delivery.
- ``ReferenceSink``: compares every block with a copy of the file known in advance (the S3 object a device verifies
  against, fetched once per fleet): one memory comparison per block instead of hashing it; only differing blocks
  are kept, to hash what really arrived when it is not the reference.
- ``FileSink``: writes into ``<path>.part``. With a state directory it is resumable: the bitmap of received blocks
  is persisted atomically (temp file + fsync + rename + directory fsync) every ``flush_every_blocks`` blocks or
  ``flush_every_s`` seconds, and always *after* an fsync of the data it covers, so a bit on disk never stands for a
  half-written block. Reopening with the same ``ResumeKey``, size and block size trusts exactly the blocks of the
  last persisted bitmap; anything else (stream version changed, size or block size changed, part file missing or of
  the wrong length) discards the partial and starts clean. ``commit()`` renames the part file into place after the
  caller verified ``finish()``'s digest.

Sinks are sans-clock: a caller that wants time-based flushing passes ``now`` (any monotonic seconds) to ``write``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from device_sim.fileio import atomic_write
from device_sim.protocol.limits import block_count, block_length

log = logging.getLogger(__name__)

_STATE_FORMAT = 1
_READ_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------------- public types


@dataclass(frozen=True, kw_only=True, slots=True)
class SinkResult:
    """What a complete download hashed to."""

    sha256: str
    size: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ResumeKey:
    """Which stream file a persisted partial belongs to; any change on reopen discards the partial."""

    stream_id: str
    file_id: int
    stream_version: int


class ResumeStatus(Enum):
    FRESH = "fresh"  # no usable state: started from nothing
    RESUMED = "resumed"  # the persisted bitmap was trusted
    DISCARDED = "discarded"  # state existed but did not match; the partial was thrown away


class SinkError(Exception):
    """Base of the sink errors. ``hint`` says what to do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class SinkUsageError(SinkError):
    """The caller did something the sink does not allow (a block that does not fit, finish before complete...)."""


class SinkStorageError(SinkError):
    """The disk failed us (permissions, space, a vanished directory)."""


@runtime_checkable
class BlockSink(Protocol):
    """Where the blocks of one file go."""

    @property
    def file_size(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    def write(self, index: int, offset: int, data: bytes) -> bool:
        """Store block ``index``; False when it was already stored (the duplicate is ignored)."""
        ...

    def has(self, index: int) -> bool: ...

    def received_blocks(self) -> Iterator[int]:
        """Indices of the blocks stored so far, ascending (after a resume: the trusted ones)."""
        ...

    def finish(self) -> SinkResult:
        """SHA-256 and size of the complete file; SinkUsageError when blocks are missing."""
        ...

    def close(self) -> None:
        """Release resources; a resumable sink keeps its partial state."""
        ...

    def abort(self) -> None:
        """Release resources and throw away any partial state."""
        ...


# ------------------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True, slots=True)
class _Layout:
    file_size: int
    block_size: int
    total_blocks: int

    @classmethod
    def of(cls, file_size: int, block_size: int) -> _Layout:
        if file_size < 0:
            raise SinkUsageError(f"file size {file_size} is negative")
        if block_size <= 0:
            raise SinkUsageError(f"block size {block_size} must be positive")
        return cls(file_size, block_size, block_count(file_size, block_size))

    def check(self, index: int, offset: int, data: bytes) -> None:
        total, size = self.total_blocks, self.block_size
        if not 0 <= index < total:
            raise SinkUsageError(f"block {index} is outside the file (it has {total} blocks)")
        if offset != index * size:
            raise SinkUsageError(f"block {index} must start at byte {index * size}, not {offset}")
        expected = block_length(self.file_size, size, index)
        if len(data) != expected:
            raise SinkUsageError(f"block {index} must be {expected} bytes long, got {len(data)}")


class _LaidOut:
    """``file_size`` and ``block_size`` of a sink, read from its ``_layout``."""

    _layout: _Layout

    @property
    def file_size(self) -> int:
        return self._layout.file_size

    @property
    def block_size(self) -> int:
        return self._layout.block_size


class _Bits:
    """Received-blocks bitmap, same layout as the wire bitmap (byte k covers blocks 8k..8k+7, LSB lowest)."""

    __slots__ = ("count", "raw", "total")

    def __init__(self, total: int, raw: bytes | None = None) -> None:
        self.total = total
        self.raw = bytearray(raw) if raw is not None else bytearray((total + 7) // 8)
        self.count = sum(1 for i in range(total) if self.raw[i >> 3] >> (i & 7) & 1) if raw is not None else 0

    def test(self, index: int) -> bool:
        return bool(self.raw[index >> 3] >> (index & 7) & 1)

    def set(self, index: int) -> None:
        self.raw[index >> 3] |= 1 << (index & 7)
        self.count += 1

    def indices(self) -> Iterator[int]:
        return (i for i in range(self.total) if self.raw[i >> 3] >> (i & 7) & 1)

    def first_missing(self) -> int | None:
        return next((i for i in range(self.total) if not self.raw[i >> 3] >> (i & 7) & 1), None)

    def valid_for(self, total: int) -> bool:
        """Right length and no bit set past the last block."""
        if len(self.raw) != (total + 7) // 8:
            return False
        return not any(self.raw[i >> 3] >> (i & 7) & 1 for i in range(total, len(self.raw) * 8))


class _Tracked(_LaidOut):
    """A sink that records its blocks in a ``_Bits`` (``_bits``): ``has``, ``received_blocks`` and the check that
    ``finish()`` comes after the last block."""

    _bits: _Bits

    def has(self, index: int) -> bool:
        return 0 <= index < self._layout.total_blocks and self._bits.test(index)

    def received_blocks(self) -> Iterator[int]:
        return self._bits.indices()

    def _require_complete(self) -> None:
        bits = self._bits
        if bits.count != bits.total:
            raise SinkUsageError(
                f"{bits.total - bits.count} of {bits.total} blocks are missing (first: block {bits.first_missing()})",
                hint="call finish() only after every block was written",
            )


@contextlib.contextmanager
def _storage(action: str, path: Path) -> Iterator[None]:
    """The one place OSError becomes SinkStorageError."""
    try:
        yield
    except OSError as exc:
        raise SinkStorageError(
            f"cannot {action} {path}: {exc.strerror or exc}",
            hint="check that the directory exists, is writable and has free space",
        ) from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# ------------------------------------------------------------------------------------------------------ MemorySink


class MemorySink(_Tracked):
    """The whole file in memory."""

    def __init__(self, file_size: int, block_size: int) -> None:
        self._layout = _Layout.of(file_size, block_size)
        self._buf = bytearray(file_size)
        self._bits = _Bits(self._layout.total_blocks)

    def write(self, index: int, offset: int, data: bytes) -> bool:
        self._layout.check(index, offset, data)
        if self._bits.test(index):
            return False
        self._buf[offset : offset + len(data)] = data
        self._bits.set(index)
        return True

    def finish(self) -> SinkResult:
        self._require_complete()
        return SinkResult(sha256=hashlib.sha256(self._buf).hexdigest(), size=len(self._buf))

    def getvalue(self) -> bytes:
        """The file's bytes (blocks not yet written are zeros)."""
        return bytes(self._buf)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self._buf = bytearray()


# ------------------------------------------------------------------------------------------------------ DigestSink


#: hashlib releases the GIL for inputs of 2048 bytes or more (CPython's HASHLIB_GIL_MINSIZE). Per block, in a fleet
#: whose awscrt threads wait for the GIL, that hand-off and the wait to get the GIL back cost more than hashing
#: itself (a 4 KiB update took 6.3 us alone, 4.2 us in three pieces); hashing in pieces below the limit keeps it.
_GIL_FREE_HASH_PIECE = 2047


def _hash_holding_gil(digest: Any, data: bytes) -> None:
    if len(data) <= _GIL_FREE_HASH_PIECE:
        digest.update(data)
        return
    view = memoryview(data)
    for start in range(0, len(view), _GIL_FREE_HASH_PIECE):
        digest.update(view[start : start + _GIL_FREE_HASH_PIECE])


class DigestSink(_LaidOut):
    """Streaming SHA-256 that buffers only out-of-order blocks."""

    def __init__(self, file_size: int, block_size: int) -> None:
        self._layout = _Layout.of(file_size, block_size)
        self._hash = hashlib.sha256()
        self._next = 0  # every block below this one is hashed
        self._pending: dict[int, bytes] = {}
        self._buffered = 0
        self.peak_buffered_bytes = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes of out-of-order blocks waiting for a gap to fill."""
        return self._buffered

    def write(self, index: int, offset: int, data: bytes) -> bool:
        self._layout.check(index, offset, data)
        if index < self._next or index in self._pending:
            return False
        if index != self._next:
            self._pending[index] = bytes(data)
            self._buffered += len(data)
            self.peak_buffered_bytes = max(self.peak_buffered_bytes, self._buffered)
            return True
        _hash_holding_gil(self._hash, data)
        self._next += 1
        pending = self._pending
        while self._next in pending:
            block = pending.pop(self._next)
            self._buffered -= len(block)
            _hash_holding_gil(self._hash, block)
            self._next += 1
        return True

    def has(self, index: int) -> bool:
        return 0 <= index < self._next or index in self._pending

    def received_blocks(self) -> Iterator[int]:
        yield from range(self._next)
        yield from sorted(self._pending)

    def finish(self) -> SinkResult:
        total = self._layout.total_blocks
        if self._next != total:
            missing = total - self._next - len(self._pending)
            raise SinkUsageError(
                f"{missing} of {total} blocks are missing (first: block {self._next})",
                hint="call finish() only after every block was written",
            )
        return SinkResult(sha256=self._hash.hexdigest(), size=self._layout.file_size)

    def close(self) -> None:
        self._pending.clear()
        self._buffered = 0

    def abort(self) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------- ReferenceSink


class ReferenceSink(_Tracked):
    """Checks each block against ``reference``, the file's expected bytes, instead of hashing it.

    A device that verifies against S3 knows the object before it downloads (a fleet fetches it once and shares it):
    comparing a block with its place in that object is one ``memcmp``, where hashing it cost SHA-256 plus a CRC-32.
    A block that equals the reference is only counted; one that differs is kept, so that ``finish()`` can hash
    what really arrived (the reference with those blocks in their places) and ``first_mismatch`` names the first.
    When every block matched, ``finish()`` returns ``reference_sha256`` (the caller hashed the reference once).
    """

    def __init__(self, reference: bytes, reference_sha256: str, block_size: int) -> None:
        self._layout = _Layout.of(len(reference), block_size)
        self._reference = reference
        self._view = memoryview(reference)
        self._sha256 = reference_sha256
        self._bits = _Bits(self._layout.total_blocks)
        self._differing: dict[int, bytes] = {}

    @property
    def first_mismatch(self) -> int | None:
        """The lowest block that differed from the reference (None: none so far)."""
        return min(self._differing) if self._differing else None

    def write(self, index: int, offset: int, data: bytes) -> bool:
        self._layout.check(index, offset, data)
        if self._bits.test(index):
            return False
        self._bits.set(index)
        if not self._reference.startswith(data, offset):  # a memcmp (comparing memoryviews goes byte by byte)
            self._differing[index] = bytes(data)
        return True

    def finish(self) -> SinkResult:
        self._require_complete()
        if not self._differing:
            return SinkResult(sha256=self._sha256, size=self._layout.file_size)
        digest, view, size = hashlib.sha256(), self._view, self._layout.block_size
        start = 0
        for index in sorted(self._differing):
            digest.update(view[start : index * size])
            digest.update(self._differing[index])
            start = index * size + len(self._differing[index])
        digest.update(view[start:])
        return SinkResult(sha256=digest.hexdigest(), size=self._layout.file_size)

    def close(self) -> None:
        self._differing.clear()

    def abort(self) -> None:
        self.close()


# -------------------------------------------------------------------------------------------------------- FileSink


class _FileState(Enum):
    OPEN = "open"
    FINISHED = "finished"
    COMMITTED = "committed"
    CLOSED = "closed"


class FileSink(_Tracked):
    """Blocks into ``<path>.part``; resumable with ``state_dir``; ``commit()`` moves it into place.

    ``flush_every_blocks`` / ``flush_every_s`` bound how much a crash can lose (those blocks are downloaded again).
    Without ``state_dir`` nothing is persisted before ``finish()`` and ``close()`` removes the part file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        file_size: int,
        block_size: int,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        resume_key: ResumeKey | None = None,
        flush_every_blocks: int = 256,
        flush_every_s: float = 2.0,
    ) -> None:
        if state_dir is not None and resume_key is None:
            raise SinkUsageError("a resumable FileSink needs resume_key", hint="pass stream id, file id and version")
        if flush_every_blocks < 1 or flush_every_s <= 0:
            raise SinkUsageError("flush_every_blocks must be >= 1 and flush_every_s > 0")
        self._layout = _Layout.of(file_size, block_size)
        self.path = Path(path).absolute()
        self.part_path = self.path.with_name(self.path.name + ".part")
        self._state_dir = Path(state_dir).absolute() if state_dir is not None else None
        self._key = resume_key
        self._flush_blocks = flush_every_blocks
        self._flush_s = flush_every_s
        self._dirty = 0
        self._last_flush: float | None = None
        self._state = _FileState.OPEN
        self.resume_status = ResumeStatus.FRESH
        self.discard_reason: str | None = None
        self._bits = _Bits(self._layout.total_blocks)
        with _storage("open", self.part_path):
            self._fd = self._open()
        #: How many blocks were trusted from a previous run (0 unless RESUMED).
        self.resumed_blocks = self._bits.count

    # -- state files

    @property
    def meta_path(self) -> Path | None:
        return self._state_dir / f"{self.path.name}.resume.json" if self._state_dir else None

    @property
    def bitmap_path(self) -> Path | None:
        return self._state_dir / f"{self.path.name}.bitmap" if self._state_dir else None

    def _metadata(self) -> dict[str, object]:
        assert self._key is not None
        return {
            "format": _STATE_FORMAT,
            **asdict(self._key),
            "file_size": self._layout.file_size,
            "block_size": self._layout.block_size,
            "part": str(self.part_path),
        }

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._state_dir is not None:
            self._state_dir.mkdir(parents=True, exist_ok=True)
            trusted = self._load_state()
            if trusted is not None:
                self._bits = trusted
                self.resume_status = ResumeStatus.RESUMED
                log.info("resuming %s: %d of %d blocks trusted", self.path, trusted.count, trusted.total)
                return os.open(self.part_path, os.O_RDWR)
        fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, self._layout.file_size)
        if self._state_dir is not None:
            assert self.meta_path is not None and self.bitmap_path is not None
            _unlink(self.bitmap_path)  # the metadata never describes an older bitmap
            atomic_write(self.meta_path, json.dumps(self._metadata(), sort_keys=True).encode(), mode=0o600)
        return fd

    def _load_state(self) -> _Bits | None:
        """The trusted bitmap, or None (and the stale partial removed) when the state does not match."""
        assert self.meta_path is not None and self.bitmap_path is not None
        if not self.meta_path.exists():
            return None
        reason = None
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as exc:
            meta, reason = None, f"unreadable state ({exc})"
        if meta is not None and meta != self._metadata():
            changed = sorted(k for k in set(meta) | set(self._metadata()) if meta.get(k) != self._metadata().get(k))
            reason = f"changed since the partial was written: {', '.join(changed)}"
        bits = None
        if reason is None:
            empty = bytes((self._layout.total_blocks + 7) // 8)
            raw = self.bitmap_path.read_bytes() if self.bitmap_path.exists() else empty
            bits = _Bits(self._layout.total_blocks, raw)
            if not bits.valid_for(self._layout.total_blocks):
                reason = "bitmap has the wrong length"
            elif not self.part_path.exists() or self.part_path.stat().st_size != self._layout.file_size:
                reason = "part file missing or of the wrong size"
        if reason is None:
            return bits
        log.warning("discarding the partial download of %s: %s", self.path, reason)
        self.resume_status, self.discard_reason = ResumeStatus.DISCARDED, reason
        for stale in (self.part_path, self.bitmap_path, self.meta_path):
            _unlink(stale)
        return None

    # -- BlockSink

    def write(self, index: int, offset: int, data: bytes, now: float | None = None) -> bool:
        """Store a block; with a state dir, persist the bitmap when ``flush_every_blocks`` blocks or
        ``flush_every_s`` seconds (measured with the ``now`` values the caller passes) have gone by."""
        self._require(_FileState.OPEN, "write")
        self._layout.check(index, offset, data)
        if self._bits.test(index):
            return False
        with _storage("write", self.part_path):
            view = memoryview(data)
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        self._bits.set(index)
        if self._state_dir is not None:
            self._dirty += 1
            if self._last_flush is None:
                self._last_flush = now
            due_by_time = now is not None and self._last_flush is not None and now - self._last_flush >= self._flush_s
            if self._dirty >= self._flush_blocks or due_by_time:
                self.flush(now)
        return True

    def flush(self, now: float | None = None) -> None:
        """fsync the data, then persist the bitmap that covers it (no-op without a state dir)."""
        if self._state_dir is None or self._state not in (_FileState.OPEN, _FileState.FINISHED):
            return
        assert self.bitmap_path is not None
        with _storage("persist the download state of", self.part_path):
            os.fsync(self._fd)
            atomic_write(self.bitmap_path, bytes(self._bits.raw), mode=0o600)
        self._dirty = 0
        self._last_flush = now

    def finish(self) -> SinkResult:
        """Hash the complete part file (read back from disk)."""
        self._require(_FileState.OPEN, "finish")
        self._require_complete()
        digest = hashlib.sha256()
        with _storage("read back", self.part_path):
            os.fsync(self._fd)
            offset = 0
            while offset < self._layout.file_size:
                chunk = os.pread(self._fd, min(_READ_CHUNK, self._layout.file_size - offset), offset)
                if not chunk:
                    raise OSError(f"part file ends at byte {offset}")
                digest.update(chunk)
                offset += len(chunk)
        self._state = _FileState.FINISHED
        self.flush()
        return SinkResult(sha256=digest.hexdigest(), size=self._layout.file_size)

    def commit(self, final_path: str | os.PathLike[str] | None = None) -> Path:
        """Atomically rename the verified part file to ``final_path`` (default: ``path``) and drop the state."""
        self._require(_FileState.FINISHED, "commit")
        target = Path(final_path).absolute() if final_path is not None else self.path
        with _storage("move into place", target):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.close(self._fd)
            self._fd = -1
            os.replace(self.part_path, target)
            _fsync_dir(target.parent)
            self._remove_state()
        self._state = _FileState.COMMITTED
        return target

    def close(self) -> None:
        """Flush and release; the partial stays for a resume (without a state dir it is removed)."""
        if self._state in (_FileState.COMMITTED, _FileState.CLOSED):
            return
        self.flush()
        self._release()
        if self._state_dir is None:
            _unlink(self.part_path)
        self._state = _FileState.CLOSED

    def abort(self) -> None:
        """Release and remove the part file and the resume state."""
        if self._state is _FileState.COMMITTED:
            return
        self._release()
        with _storage("remove", self.part_path):
            _unlink(self.part_path)
            self._remove_state()
        self._state = _FileState.CLOSED

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals

    def _require(self, state: _FileState, action: str) -> None:
        if self._state is not state:
            raise SinkUsageError(f"cannot {action}: the sink is {self._state.value}, it must be {state.value}")

    def _release(self) -> None:
        if self._fd >= 0:
            with _storage("close", self.part_path):
                os.close(self._fd)
            self._fd = -1

    def _remove_state(self) -> None:
        for path in (self.bitmap_path, self.meta_path):
            if path is not None:
                _unlink(path)
