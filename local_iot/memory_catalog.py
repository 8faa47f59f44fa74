"""``InMemoryCatalog``: the ``Catalog`` interface over plain dictionaries, for tests of the stream service.

It models what the service needs to see of S3, IAM and the stream API: versioned objects with ETags, roles
that exist and may (or may not) be assumed by ``iot.amazonaws.com``, and streams whose files record the ETag
(and optionally the version) of their objects, like create/update_stream do on AWS. Thread-safe (one lock), so a
test thread may change the world while the service reads it.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from dataclasses import dataclass, field, replace

from device_sim.protocol import ErrorCode
from device_sim.protocol.limits import MAX_STREAM_VERSION

from .catalog import CatalogError, StreamFile, StreamRecord

__all__ = ["InMemoryCatalog", "ObjectVersion"]

_ACCOUNT = "123456789012"
_REGION = "us-east-1"


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectVersion:
    version_id: str
    etag: str
    data: bytes


@dataclass(kw_only=True, slots=True)
class _Role:
    assumable_by_iot: bool = True
    may_read_s3: bool = True


@dataclass(kw_only=True, slots=True)
class _Bucket:
    versioned: bool
    objects: dict[str, list[ObjectVersion]] = field(default_factory=dict)  # key -> versions, newest last


class InMemoryCatalog:
    """A ``Catalog`` for tests. Build the world with ``put_object``, ``add_role`` and ``create_stream``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._roles: dict[str, _Role] = {}
        self._streams: dict[str, StreamRecord] = {}
        self._version_ids = itertools.count(1)
        self.reads = 0  # how many times read() was called (the service should cache)

    # -- building the world (test side) -----------------------------------------------------------------------

    def create_bucket(self, bucket: str, *, versioned: bool = True) -> None:
        with self._lock:
            self._buckets.setdefault(bucket, _Bucket(versioned=versioned))

    def put_object(self, bucket: str, key: str, data: bytes) -> ObjectVersion:
        """Store ``data`` (a new current version in a versioned bucket; a replacement otherwise)."""
        with self._lock:
            return self._put(bucket, key, data)

    def delete_object(self, bucket: str, key: str, version_id: str | None = None) -> None:
        """Delete one version, or the whole key when ``version_id`` is None."""
        with self._lock:
            versions = self._buckets[bucket].objects.get(key, [])
            if version_id is None:
                versions.clear()
            else:
                versions[:] = [v for v in versions if v.version_id != version_id]

    def add_role(self, role_arn: str, *, assumable_by_iot: bool = True, may_read_s3: bool = True) -> None:
        with self._lock:
            self._roles[role_arn] = _Role(assumable_by_iot=assumable_by_iot, may_read_s3=may_read_s3)

    def delete_role(self, role_arn: str) -> None:
        with self._lock:
            self._roles.pop(role_arn, None)

    def create_stream(
        self,
        stream_id: str,
        files: list[tuple[int, str, str, str | None]],
        role_arn: str,
        description: str = "",
    ) -> StreamRecord:
        """Like ``create_stream``: ``files`` are ``(fileId, bucket, key, version or None)``; version 1."""
        with self._lock:
            record = StreamRecord(
                stream_id=stream_id,
                stream_arn=f"arn:aws:iot:{_REGION}:{_ACCOUNT}:stream/{stream_id}",
                version=1,
                description=description,
                role_arn=role_arn,
                files=tuple(self._record_file(*entry) for entry in files),
            )
            self._streams[stream_id] = record
            return record

    def update_stream(self, stream_id: str, files: list[tuple[int, str, str, str | None]] | None = None) -> int:
        """Like ``update_stream``: re-records the files (and their ETags), version + 1. Returns the version."""
        with self._lock:
            old = self._streams[stream_id]
            new_files = (
                tuple(self._record_file(*entry) for entry in files)
                if files is not None
                else tuple(self._record_file(f.file_id, f.bucket, f.key, f.version_id) for f in old.files)
            )
            new = replace(old, version=(old.version % MAX_STREAM_VERSION) + 1, files=new_files)
            self._streams[stream_id] = new
            return new.version

    def delete_stream(self, stream_id: str) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)

    # -- the Catalog interface (service side) -----------------------------------------------------------------

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        with self._lock:
            return self._streams.get(stream_id)

    def check_access(self, stream: StreamRecord, file: StreamFile) -> None:
        with self._lock:
            role = self._roles.get(stream.role_arn)
            if role is None or not role.assumable_by_iot:
                raise CatalogError(ErrorCode.UNAUTHORIZED, f"The role {stream.role_arn} cannot be assumed.")
            if not role.may_read_s3:
                raise CatalogError(ErrorCode.UNAUTHORIZED, f"Access denied to s3://{file.bucket}/{file.key}.")
            current = self._find(file)
            if current.etag != file.etag:
                raise CatalogError(ErrorCode.ETAG_MISMATCH, "The S3 object changed after the stream recorded it.")

    def read(self, file: StreamFile) -> bytes:
        with self._lock:
            self.reads += 1
            return self._find(file).data

    def bump_stream_version(self, stream_id: str) -> int:
        with self._lock:
            old = self._streams[stream_id]
            self._streams[stream_id] = replace(old, version=(old.version % MAX_STREAM_VERSION) + 1)
            return old.version % MAX_STREAM_VERSION + 1

    def overwrite_object(self, file: StreamFile, data: bytes) -> None:
        with self._lock:
            self._put(file.bucket, file.key, data)

    # -- internals (lock held) ----------------------------------------------------------------------------------

    def _put(self, bucket: str, key: str, data: bytes) -> ObjectVersion:
        store = self._buckets.setdefault(bucket, _Bucket(versioned=True))
        version = ObjectVersion(
            version_id=f"v{next(self._version_ids)}" if store.versioned else "null", etag=_etag(data), data=data
        )
        versions = store.objects.setdefault(key, [])
        if not store.versioned:
            versions.clear()
        versions.append(version)
        return version

    def _record_file(self, file_id: int, bucket: str, key: str, version_id: str | None) -> StreamFile:
        probe = StreamFile(file_id=file_id, bucket=bucket, key=key, version_id=version_id, etag="")
        return replace(probe, etag=self._find(probe).etag)

    def _find(self, file: StreamFile) -> ObjectVersion:
        store = self._buckets.get(file.bucket)
        versions = store.objects.get(file.key, []) if store else []
        if file.version_id is None:
            if versions:
                return versions[-1]
        else:
            for version in versions:
                if version.version_id == file.version_id:
                    return version
        where = f"s3://{file.bucket}/{file.key}" + (f"?versionId={file.version_id}" if file.version_id else "")
        raise CatalogError(ErrorCode.RESOURCE_NOT_FOUND, f"The S3 object {where} does not exist.")
