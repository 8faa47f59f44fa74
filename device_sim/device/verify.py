"""Verification of a downloaded file against its source: the S3 object the stream points at, or a given digest.

How this works: ``S3Source`` asks ``describe_stream`` (standard boto3 credential chain; ``AWS_ENDPOINT_URL`` for
local_iot) which bucket, key and version a file id comes from, fetches that object once and keeps its SHA-256,
size and bytes in a small cache shared by every device of a fleet (one fetch per object version, however many
devices verify). A device keeps a CRC-32 per block as it writes; on a mismatch the first block whose CRC differs
from the source's names where the download went wrong. boto3 is blocking: callers run ``S3Source`` methods in a
thread (``asyncio.to_thread``); a lock per object makes concurrent devices wait for one fetch.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

__all__ = ["S3Location", "S3Source", "SourceError", "Verdict", "block_crcs", "compare"]


class SourceError(Exception):
    """The source could not be read (no credentials, no such stream/object, access denied); says what to do."""


@dataclass(frozen=True, kw_only=True, slots=True)
class S3Location:
    bucket: str
    key: str
    version: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceObject:
    location: S3Location
    sha256: str
    size: int
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    verified: bool
    expected_sha256: str
    expected_size: int
    first_bad_block: int | None = None  # None when verified or when it could not be located
    message: str = ""


def block_crcs(data: bytes, block_size: int) -> list[int]:
    view = memoryview(data)
    return [zlib.crc32(view[i : i + block_size]) for i in range(0, len(data), block_size)]


def compare(
    *,
    sha256: str,
    size: int,
    expected_sha256: str,
    expected_size: int | None,
    crcs: Sequence[int] | None = None,
    source_crcs: Sequence[int] | None = None,
    first_bad_block: int | None = None,
) -> Verdict:
    """Compare a download (digest, size, and per-block CRCs or the first differing block when known) with the
    source."""
    ok = sha256 == expected_sha256.lower() and (expected_size is None or size == expected_size)
    exp_size = size if expected_size is None else expected_size
    if ok:
        return Verdict(verified=True, expected_sha256=expected_sha256, expected_size=exp_size)
    first_bad = first_bad_block
    if crcs is not None and source_crcs is not None:
        for i in range(max(len(crcs), len(source_crcs))):
            if i >= len(crcs) or i >= len(source_crcs) or crcs[i] != source_crcs[i]:
                first_bad = i
                break
    detail = f"; first differing block {first_bad}" if first_bad is not None else ""
    return Verdict(
        verified=False,
        expected_sha256=expected_sha256,
        expected_size=exp_size,
        first_bad_block=first_bad,
        message=(
            f"downloaded {size} bytes with SHA-256 {sha256[:16]}..., the source has {exp_size} bytes with "
            f"SHA-256 {expected_sha256[:16]}...{detail}"
        ),
    )


class S3Source:
    """The S3 objects behind a stream, through boto3 (a real account or ``AWS_ENDPOINT_URL``)."""

    def __init__(
        self, session: Any | None = None, *, region: str | None = None, endpoint_url: str | None = None
    ) -> None:
        import boto3  # type: ignore[import-untyped]  # deferred: ~0.3 s, only verification needs it

        self._session = session or boto3.Session(region_name=region)
        self._endpoint_url = endpoint_url  # None: boto3's own choice (AWS_ENDPOINT_URL or the real service)
        self._iot: Any = None
        self._s3: Any = None
        self._lock = threading.Lock()
        self._object_locks: dict[S3Location, threading.Lock] = {}
        self._objects: dict[S3Location, SourceObject] = {}
        self._locations: dict[tuple[str, int], S3Location] = {}
        self._crcs: dict[tuple[S3Location, int], list[int]] = {}

    @classmethod
    def connect(cls, *, endpoint_url: str | None = None, region: str | None = None) -> S3Source:
        """A source on the standard boto3 credential chain, talking to ``endpoint_url`` when given.

        A manifest made against a custom endpoint (local_iot, which takes any credentials) may be verified from a
        shell with no AWS credentials: then placeholder keys are used for that endpoint only. A real account's
        manifest has no endpoint URL, so real credentials are never replaced.
        """
        import os

        import boto3

        region = region or os.environ.get("AWS_REGION") or None  # read, never written
        session = boto3.Session(region_name=region)
        if endpoint_url and session.get_credentials() is None:
            session = boto3.Session(region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing")
        return cls(session, endpoint_url=endpoint_url)

    def prepare(self, stream_id: str) -> None:
        """Create the boto3 clients and learn where the stream's files come from, ahead of ``locate``/``fetch``
        (a device calls it in a thread while it downloads). Never raises: ``locate`` reports the errors."""
        try:
            with self._lock:
                if self._iot is None:
                    self._iot = self._session.client("iot", endpoint_url=self._endpoint_url)
                if self._s3 is None:
                    self._s3 = self._session.client("s3", endpoint_url=self._endpoint_url)
                if any(key[0] == stream_id for key in self._locations):
                    return
            info = self._iot.describe_stream(streamId=stream_id)["streamInfo"]
            with self._lock:
                for entry in info.get("files", []):
                    loc = entry["s3Location"]
                    self._locations[(stream_id, entry["fileId"])] = S3Location(
                        bucket=loc["bucket"], key=loc["key"], version=loc.get("version")
                    )
        except (ClientError, BotoCoreError, KeyError, TypeError) as exc:
            log.debug("preparing the S3 source of stream %s: %s", stream_id, exc)

    def prepared(self, stream_id: str) -> bool:
        """Whether ``prepare`` has nothing left to do for the stream (both clients made, its files located); never
        blocks, so the event loop may ask before it spends a thread hop (~100 us of CPU here) on ``prepare``."""
        with self._lock:
            return (
                self._iot is not None and self._s3 is not None and any(key[0] == stream_id for key in self._locations)
            )

    def locate(self, stream_id: str, file_id: int) -> S3Location:
        """Where a stream's file comes from (``describe_stream``)."""
        key = (stream_id, file_id)
        with self._lock:
            if key in self._locations:
                return self._locations[key]
            if self._iot is None:
                self._iot = self._session.client("iot", endpoint_url=self._endpoint_url)
        try:
            info = self._iot.describe_stream(streamId=stream_id)["streamInfo"]
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(
                f"cannot describe stream {stream_id} to find its S3 source: {exc} "
                "(check credentials/region/AWS_ENDPOINT_URL, or use --no-verify-s3 / --expect-sha256)"
            ) from exc
        for entry in info.get("files", []):
            if entry.get("fileId") == file_id:
                loc = entry["s3Location"]
                location = S3Location(bucket=loc["bucket"], key=loc["key"], version=loc.get("version"))
                with self._lock:
                    self._locations[key] = location
                return location
        raise SourceError(f"stream {stream_id} has no file id {file_id}")

    def fetched(self, stream_id: str, file_id: int) -> SourceObject | None:
        """The object of a stream's file if it was located and fetched already (None otherwise); never blocks on
        the network, so the event loop may call it (the lock is held only around dictionary lookups)."""
        with self._lock:
            location = self._locations.get((stream_id, file_id))
            return self._objects.get(location) if location is not None else None

    def fetch(self, location: S3Location) -> SourceObject:
        """The object's bytes and digest, fetched once per location."""
        with self._lock:
            found = self._objects.get(location)
            if found is not None:
                return found
            lock = self._object_locks.setdefault(location, threading.Lock())
            if self._s3 is None:
                self._s3 = self._session.client("s3", endpoint_url=self._endpoint_url)
        with lock:
            with self._lock:
                found = self._objects.get(location)
            if found is not None:
                return found
            args = {"Bucket": location.bucket, "Key": location.key}
            if location.version:
                args["VersionId"] = location.version
            try:
                data = self._s3.get_object(**args)["Body"].read()
            except (ClientError, BotoCoreError) as exc:
                raise SourceError(
                    f"cannot read s3://{location.bucket}/{location.key} (version {location.version}): {exc}"
                ) from exc
            obj = SourceObject(location=location, sha256=hashlib.sha256(data).hexdigest(), size=len(data), data=data)
            with self._lock:
                self._objects[location] = obj
            return obj

    def source_crcs(self, obj: SourceObject, block_size: int) -> list[int]:
        key = (obj.location, block_size)
        with self._lock:
            found = self._crcs.get(key)
        if found is None:
            found = block_crcs(obj.data, block_size)
            with self._lock:
                self._crcs[key] = found
        return found
