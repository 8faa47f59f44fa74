"""What the stream service needs to know about streams and S3 objects: the ``Catalog`` interface.

The control plane (moto plus the stream API, ``local_iot.control_plane``) implements it over moto's backends;
``InMemoryCatalog`` implements it for unit tests of the service logic. The service never talks to moto directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from device_sim.protocol import ErrorCode


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamFile:
    """One ``files`` entry of a stream, with what create/update_stream recorded of the S3 object."""

    file_id: int
    bucket: str
    key: str
    version_id: str | None  # the pinned version, None when s3Location.version was left out
    etag: str  # ETag of the object (pinned version, else the current one) when the stream was created/updated


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamRecord:
    stream_id: str
    stream_arn: str
    version: int
    description: str
    role_arn: str
    files: tuple[StreamFile, ...]

    def file(self, file_id: int) -> StreamFile | None:
        return next((f for f in self.files if f.file_id == file_id), None)


class CatalogError(Exception):
    """A condition the service answers with ``code`` (Unauthorized, ResourceNotFound, ETagMismatch)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Catalog(Protocol):
    def get_stream(self, stream_id: str) -> StreamRecord | None:
        """The stream as it is now (its current version), or None when it does not exist. Cheap."""
        ...

    def check_access(self, stream: StreamRecord, file: StreamFile) -> None:
        """Raise CatalogError: UNAUTHORIZED when the stream's role does not exist, is not assumable by
        ``iot.amazonaws.com`` or may not read the object; RESOURCE_NOT_FOUND when the object or version is gone;
        ETAG_MISMATCH when the object's current ETag differs from ``file.etag``. Cheap: called per request."""
        ...

    def read(self, file: StreamFile) -> bytes:
        """The object's bytes (the service caches them per bucket/key/version/etag). Raises CatalogError."""
        ...

    # Fault injection hooks (local_iot --faults): change the world the way a user would on AWS.
    def bump_stream_version(self, stream_id: str) -> int:
        """Like update_stream with the same files: version + 1. Returns the new version."""
        ...

    def overwrite_object(self, file: StreamFile, data: bytes) -> None:
        """Overwrite the S3 object (unpinned key: a new ETag; versioned bucket: a new current version)."""
        ...
