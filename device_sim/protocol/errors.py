"""Error codes and the exception hierarchy of the stream protocol.

``StreamProtocolError`` is the base. ``LocalProtocolError``: the caller asked for something the protocol does
not allow (fix your arguments). ``RemoteProtocolError``: the peer sent something malformed. ``RequestRejected``:
a request a service must reject; it carries the AWS error code, the message and the client token to echo.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Values of ``o`` on ``rejected/<fmt>`` (docs/protocol.md section 4)."""

    INVALID_TOPIC = "InvalidTopic"
    INVALID_JSON = "InvalidJson"
    INVALID_CBOR = "InvalidCbor"
    INVALID_REQUEST = "InvalidRequest"
    UNAUTHORIZED = "Unauthorized"
    BLOCK_SIZE_OUT_OF_BOUNDS = "BlockSizeOutOfBounds"
    OFFSET_OUT_OF_BOUNDS = "OffsetOutOfBounds"
    BLOCK_COUNT_LIMIT_EXCEEDED = "BlockCountLimitExceeded"
    BLOCK_BITMAP_LIMIT_EXCEEDED = "BlockBitmapLimitExceeded"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    VERSION_MISMATCH = "VersionMismatch"
    ETAG_MISMATCH = "ETagMismatch"
    INTERNAL_ERROR = "InternalError"

    @classmethod
    def parse(cls, value: str) -> ErrorCode | None:
        """The enum member for ``value``, or None for a code this library does not know."""
        try:
            return cls(value)
        except ValueError:
            return None


#: AWS's own message for a request that reaches past the end of the file.
OUT_OF_RANGE_MESSAGE = "The data requested is out of the range of data available."


class StreamProtocolError(Exception):
    """Base of every error raised by ``device_sim.protocol``."""

    def __init__(self, message: str, *, code: ErrorCode | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.code.value}: {self.message}" if self.code else self.message
        return f"{text} ({self.hint})" if self.hint else text


class LocalProtocolError(StreamProtocolError):
    """The caller built something the protocol does not allow."""


class RemoteProtocolError(StreamProtocolError):
    """The peer sent a message that does not follow the protocol."""


class RequestRejected(StreamProtocolError):
    """A request the service answers on ``rejected/<fmt>``.

    ``client_token`` is the token to echo in the answer, or None when the request had none or it was invalid.
    """

    code: ErrorCode

    def __init__(self, code: ErrorCode, message: str, *, client_token: str | None = None) -> None:
        super().__init__(message, code=code)
        self.code = code
        self.client_token = client_token


class InvalidTopicError(RequestRejected):
    """A topic that is not a stream topic the service knows.

    ``thing_name``/``stream_id`` are set when the ``$aws/things/<thing>/streams/<stream>/`` prefix could be read,
    so that the service can answer on that stream's ``rejected/<reply_format>``.
    """

    def __init__(
        self,
        message: str,
        *,
        thing_name: str | None = None,
        stream_id: str | None = None,
        reply_format: str = "json",
    ) -> None:
        super().__init__(ErrorCode.INVALID_TOPIC, message)
        self.thing_name = thing_name
        self.stream_id = stream_id
        self.reply_format = reply_format
