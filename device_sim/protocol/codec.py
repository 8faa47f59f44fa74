"""CBOR and JSON codecs for both roles (PROTOCOL.md sections 3-4).

Device role: ``encode_request`` / ``decode_answer``. Service role: ``decode_request`` / ``encode_answer``.
Decoders look keys up by name, ignore unknown keys, accept definite and indefinite CBOR maps and the long-form
rejection keys (``code``/``message``/``clientToken``). Service-side decoders raise ``RequestRejected`` with the
AWS code the service answers with, in the documented check order; device-side decoders raise
``RemoteProtocolError``. Encoders for the service emit what AWS emits: indefinite-length CBOR maps, data keys in
the order ``c?, f, i, l, p``, rejections with both short and long keys.
"""

from __future__ import annotations

from .messages import (
    Answer,
    DataBlock,
    DescribeStreamRequest,
    GetStreamRequest,
    Rejection,
    Request,
    StreamDescription,
)
from .topics import Format, Operation

__all__ = [
    "decode_answer",
    "decode_data_block",
    "decode_request",
    "encode_answer",
    "encode_data_block",
    "encode_request",
]


def encode_request(request: Request, fmt: Format) -> bytes:
    """Device side: payload for ``describe/<fmt>`` or ``get/<fmt>``. Raises LocalProtocolError on bad values."""
    raise NotImplementedError


def decode_request(operation: Operation, payload: bytes, fmt: Format) -> Request:
    """Service side: parse and validate a request; raises RequestRejected (code, message, token to echo)."""
    raise NotImplementedError


def encode_answer(answer: Answer, fmt: Format) -> bytes:
    """Service side: payload for ``description``/``data``/``rejected``."""
    raise NotImplementedError


def encode_data_block(
    fmt: Format, file_id: int, block_index: int, payload: bytes, client_token: str | None = None
) -> bytes:
    """Service side fast path for one data message (the hot loop of the emulator)."""
    raise NotImplementedError


def decode_answer(operation: Operation, payload: bytes, fmt: Format) -> Answer:
    """Device side: parse ``description``/``data``/``rejected``; raises RemoteProtocolError."""
    raise NotImplementedError


def decode_data_block(payload: bytes, fmt: Format) -> DataBlock:
    """Device side fast path for ``data/<fmt>``."""
    raise NotImplementedError


# Re-exported for callers that only import the codec.
_ = (DescribeStreamRequest, GetStreamRequest, StreamDescription, Rejection)
