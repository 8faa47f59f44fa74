"""The download engine's ledger: which blocks of a file are missing, asked for, or stored.

One status byte per block: MISSING, CLAIMED (asked for by a request in flight) or HAVE; and a second byte
counting how often a block was asked for (0, 1, 2 = more than once) for Karn's rule and the re-request count.
``claim`` picks the lowest missing, unclaimed blocks (``bytearray.find`` runs at C speed, so a file of
98,305 blocks costs nothing noticeable), so requests in flight never overlap and never name a stored block.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from device_sim.engine.types import EngineUsageError
from device_sim.protocol.limits import MAX_BITMAP_BYTES, MAX_OFFSET, block_count, block_length

_MISSING = 0
_CLAIMED = 1
_HAVE = 2
#: A request's bitmap stays strictly below the protocol's limit.
MAX_SPAN = (MAX_BITMAP_BYTES - 1) * 8
_CLAIMED_RUN = bytes([_CLAIMED]) * MAX_SPAN
#: How many times a block was asked for, counted up to 2 (``bytes.translate`` table: 0 -> 1, 1 -> 2, 2 -> 2).
_ASKED_AGAIN = bytes(min(2, i + 1) for i in range(256))


@dataclass(slots=True, eq=False)
class InFlight:
    """A request in flight: the blocks it still waits for and when it last saw activity."""

    seq: int  # the engine's number for it (SendRequest.seq)
    blocks: tuple[int, ...]  # what it asked for, ascending
    outstanding: set[int]
    sent_at: float
    last_activity: float  # sent, or the last of its blocks arrived
    repeated: bool  # asks again for at least one block asked before
    sent: bool  # known to have left (see EngineSettings.report_sends)
    sampled: bool = False  # the round trip was measured on this request
    received: int = 0  # of its blocks arrived (new ones)
    first_at: float = 0.0  # when the first of them arrived
    top_seen: bool = False  # its highest block arrived while lower ones were still outstanding
    #: An idle timeout gave back only its lowest outstanding block (``BlockLedger.suspect``), asked again by request
    #: ``probe_seq`` (0: never probed); the rest are released once a later request's block arrives first, or at its
    #: next idle timeout.
    suspect: bool = False
    probe_seq: int = 0

    def touch(self, now: float) -> None:
        """Restart its idle timer at ``now`` without changing its gap."""
        self.first_at += now - self.last_activity
        self.last_activity = now

    def gap(self) -> float:
        """Mean time between its blocks so far (0 before the second)."""
        return (self.last_activity - self.first_at) / (self.received - 1) if self.received > 1 else 0.0


class BlockLedger:
    """The blocks of one file (``file_size`` bytes in blocks of ``block_size``) and the requests in flight."""

    def __init__(self, file_size: int, block_size: int) -> None:
        if not isinstance(file_size, int) or isinstance(file_size, bool) or file_size < 0:
            raise EngineUsageError(f"file_size must be a non-negative integer, got {file_size!r}")
        total = block_count(file_size, block_size)
        if total - 1 > MAX_OFFSET:
            raise EngineUsageError(
                f"a {file_size}-byte file has {total} blocks of {block_size} bytes; GetStream reaches only "
                f"{MAX_OFFSET + 1}",
                hint=f"use a block size of at least {-(-file_size // (MAX_OFFSET + 1))} bytes",
            )
        self.file_size = file_size
        self.block_size = block_size
        self.total = total
        self.have_count = 0
        self.in_flight: list[InFlight] = []
        self.suspects = 0  # requests in flight that are suspect (they hold no slot of ``inflight``)
        self._last_length = block_length(file_size, block_size, total - 1) if total else 0
        self._status = bytearray(total)
        self._asked = bytearray(total)
        self._owner: dict[int, InFlight] = {}

    @property
    def complete(self) -> bool:
        return self.have_count == self.total

    def has(self, index: int) -> bool:
        return 0 <= index < self.total and self._status[index] == _HAVE

    def stored(self) -> Iterable[int]:
        return (i for i in range(self.total) if self._status[i] == _HAVE)

    def load(self, indices: Iterable[int]) -> None:
        """Mark blocks already stored (resume)."""
        for index in indices:
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.total:
                raise EngineUsageError(
                    f"resume data names block {index!r}, but the file has {self.total} blocks",
                    hint="the saved state belongs to another file or version; discard it and start afresh",
                )
            if self._status[index] != _HAVE:
                self._status[index] = _HAVE
                self.have_count += 1

    def fits(self, index: int, length_field: int, nbytes: int) -> bool:
        """Index inside the file, and the length field and the data of the exact length its position demands (the
        last block is the rest)."""
        if not 0 <= index < self.total:
            return False
        expected = self.block_size if index < self.total - 1 else self._last_length
        return length_field == expected and nbytes == expected

    def store(self, index: int, now: float) -> tuple[InFlight | None, bool]:
        """Mark a new block stored. Returns the request that asked for it and whether its time is a clean
        round-trip sample (the request's first block that was asked for only once: Karn's rule)."""
        self._status[index] = _HAVE
        self.have_count += 1
        request = self._owner.pop(index, None)
        if request is None:
            return None, False
        request.outstanding.discard(index)
        if not request.received:
            request.first_at = now
        request.received += 1
        request.last_activity = now
        request.sent = True
        if not request.outstanding:
            self._drop(request)
        elif index == request.blocks[-1]:
            request.top_seen = True
        if request.sampled or self._asked[index] != 1:
            return request, False
        request.sampled = True
        return request, True

    def claim(self, window: int, now: float, seq: int, *, sent: bool) -> InFlight | None:
        """Claim up to ``window`` (>= 1) of the lowest missing, unclaimed blocks for a new request (None: none left)."""
        status, asked = self._status, self._asked
        first = status.find(_MISSING)
        if first < 0:
            return None
        end = min(first + window, first + MAX_SPAN, self.total)
        if status.count(_MISSING, first, end) == end - first:
            # The usual case, a run of missing blocks: the bytearrays change by slices, in C (a claim of 32 blocks
            # took 15.6-21.1 us in the loop below, 6.9-7.5 us so).
            blocks: tuple[int, ...] = tuple(range(first, end))
            repeated = asked.count(0, first, end) != end - first
            status[first:end] = _CLAIMED_RUN[: end - first]
            asked[first:end] = asked[first:end].translate(_ASKED_AGAIN)
        else:
            found = [first]
            index = status.find(_MISSING, first + 1)
            while 0 <= index < first + MAX_SPAN and len(found) < window:
                found.append(index)
                index = status.find(_MISSING, index + 1)
            blocks = tuple(found)
            repeated = any(asked[i] for i in blocks)
            for i in blocks:
                status[i] = _CLAIMED
                asked[i] = min(2, asked[i] + 1)
        request = InFlight(
            seq=seq,
            blocks=blocks,
            outstanding=set(blocks),
            sent_at=now,
            last_activity=now,
            repeated=repeated,
            sent=sent,
        )
        self._owner.update(dict.fromkeys(blocks, request))
        self.in_flight.append(request)
        return request

    @property
    def active(self) -> int:
        """Requests in flight that hold a slot: all but the suspect ones."""
        return len(self.in_flight) - self.suspects

    def release(self, request: InFlight) -> None:
        """Give a request's missing blocks back (it timed out or was abandoned)."""
        for index in request.outstanding:
            self._status[index] = _MISSING
            del self._owner[index]
        self._drop(request)

    def suspect(self, request: InFlight, now: float, probe_seq: int) -> int:
        """An idle timeout that may be spurious: give back only the request's lowest outstanding block (to be
        asked again first, by request ``probe_seq``) and keep the rest claimed; returns that block. The request
        then holds no slot and its idle timer starts again now."""
        index = min(request.outstanding)
        request.outstanding.discard(index)
        self._status[index] = _MISSING
        del self._owner[index]
        request.suspect = True
        request.probe_seq = probe_seq
        request.touch(now)
        self.suspects += 1
        return index

    def trust(self, request: InFlight) -> None:
        """A suspect request holds a slot again (its answer may be arriving after all)."""
        if request.suspect:
            request.suspect = False
            self.suspects -= 1

    def _drop(self, request: InFlight) -> None:
        self.in_flight.remove(request)
        if request.suspect:
            self.suspects -= 1

    def release_all(self) -> None:
        for request in list(self.in_flight):
            self.release(request)
