"""FactbirdHQ/rustot's OTA agent as a profile (docs/profiles.md).

rustot keeps a 32-bit bitmap of which blocks of a 31-block window starting at ``o`` are still missing (the lowest
``min(31, blocks left from o)`` bits set at first). Each request is CBOR ``{"f", "l", "o", "b": <the 4 bitmap bytes,
little-endian>, "n": min(set bits, blocks_per_request)}`` (no token, no version). When every block of the window has
arrived, the window moves on by 31 blocks. Batches, the request wait (5 s) and momentum: ``LibraryMachine``.
"""

from __future__ import annotations

from collections.abc import Iterable

from device_sim.engine.profiles.base import RUSTOT_WINDOW, LibraryMachine, PlannedRequest, ProfileSettings
from device_sim.protocol.messages import GetStreamRequest, RequestShape

__all__ = ["RustotMachine"]


class RustotMachine(LibraryMachine):
    """rustot's download of one file."""

    bad_block_is_fatal = True  # an ingest error fails the job

    def __init__(
        self,
        *,
        file_id: int,
        file_size: int,
        now: float,
        settings: ProfileSettings,
        have: Iterable[int] | bytes | None = None,
    ) -> None:
        super().__init__(file_id=file_id, file_size=file_size, now=now, settings=settings, have=have)
        self._offset = 0
        self._slide()

    @property
    def window_offset(self) -> int:
        return self._offset

    def _window(self) -> list[int]:
        end = min(self._offset + RUSTOT_WINDOW, self.total_blocks)
        return [i for i in range(self._offset, end) if not self._have[i]]

    def _slide(self) -> None:
        while self._offset < self.total_blocks and not self._window():
            self._offset += RUSTOT_WINDOW

    def _stored(self, index: int) -> None:
        self._slide()

    def _request(self) -> PlannedRequest:
        missing = self._window()
        bits = 0
        for i in missing:
            bits |= 1 << (i - self._offset)
        n = min(len(missing), self.settings.blocks_per_request)
        request = GetStreamRequest(
            file_id=self.file_id,
            block_size=self.settings.block_size,
            offset=self._offset,
            number_of_blocks=n,
            bitmap=bits.to_bytes(4, "little"),
            shape=RequestShape.RUSTOT,
        )
        return PlannedRequest(request=request, blocks=tuple(missing[:n]), batch=n)
