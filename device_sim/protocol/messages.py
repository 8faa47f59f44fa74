"""Typed stream messages (docs/protocol.md section 3). Frozen, keyword-only, slotted dataclasses.

Field names are the long AWS names; the one-letter wire keys live in ``codec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from device_sim.protocol.errors import ErrorCode


class RequestShape(StrEnum):
    """How a GetStream request is laid out on the wire (``device_sim.protocol.library`` encodes the library shapes).

    ``SERVICE``: this project's own layout (keys ``c, s, f, l, o, n, b``, checked against every limit). The others
    reproduce a real device library byte for byte (docs/profiles.md): ``FREERTOS_OTA`` the stock OTA agent
    (CBOR ``c f l o b n``, no ``s``), ``MFS`` AWS's MQTT file streams library (CBOR ``c f l o b n`` with its
    placeholder bitmap, or its JSON text ``{"s": 1,"f": ..}``), ``RUSTOT`` rustot (CBOR ``f l o b n``).
    """

    SERVICE = "service"
    FREERTOS_OTA = "freertos-ota"
    MFS = "mfs"
    RUSTOT = "rustot"


@dataclass(frozen=True, kw_only=True, slots=True)
class DescribeStreamRequest:
    """``describe/<fmt>``: ``{"c": token?}``."""

    client_token: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class FileInfo:
    """One entry of ``r`` in a description: ``{"f": fileId, "z": fileSize}``."""

    file_id: int
    file_size: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamDescription:
    """``description/<fmt>``: the only place a device learns file sizes."""

    client_token: str | None = None
    stream_version: int
    description: str = ""
    files: tuple[FileInfo, ...] = ()

    def file(self, file_id: int) -> FileInfo | None:
        return next((f for f in self.files if f.file_id == file_id), None)


@dataclass(frozen=True, kw_only=True, slots=True)
class GetStreamRequest:
    """``get/<fmt>``.

    ``offset`` counts blocks. Without ``bitmap``, ``number_of_blocks`` consecutive blocks from ``offset``;
    with ``bitmap``, the blocks whose bits are set (relative to ``offset``), capped at ``number_of_blocks``.
    ``None`` means the key is absent on the wire.
    """

    client_token: str | None = None
    stream_version: int | None = None
    file_id: int
    block_size: int
    offset: int = 0
    number_of_blocks: int | None = None
    bitmap: bytes | None = None
    #: The wire layout; anything but SERVICE is a real library's (see RequestShape).
    shape: RequestShape = RequestShape.SERVICE


@dataclass(frozen=True, kw_only=True, slots=True)
class DataBlock:
    """``data/<fmt>``: one block. ``block_index`` is absolute in the file."""

    client_token: str | None = None
    file_id: int
    block_index: int
    block_length: int
    payload: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejection:
    """``rejected/<fmt>``. ``code`` is kept as text: a device must survive codes it does not know."""

    client_token: str | None = None
    code: str
    message: str = ""

    @property
    def error_code(self) -> ErrorCode | None:
        return ErrorCode.parse(self.code)


Answer = StreamDescription | DataBlock | Rejection
Request = DescribeStreamRequest | GetStreamRequest
