"""The stream API moto lacks (create/describe/update/delete/list_stream, plus IoT tagging), as a moto backend.

How this works: ``streams_backends`` is a moto ``BackendDict`` like moto's own, keyed by account and region, so
moto's reset (``POST /moto-api/reset``, or ``mock_aws`` ending) clears it together with S3, IAM and IoT. The HTTP
side (``local_iot.streams_api``) validates nothing itself: it hands decoded JSON values to these methods, which
check them against botocore's model (docs/protocol.md section 1) and raise ``StreamApiError`` with the botocore
exception name. Records are frozen; every change replaces a record under the backend's lock, so the stream service
(another thread, through ``MotoCatalog``) always sees a whole stream, never a half-updated one.

Choices where AWS is silent (docs/control_plane.md lists them): create/update do not assume the role or require
the S3 objects to exist; they record the ETag of each object that exists (read directly, as the service owner),
and an empty ETag for one that does not, so GetStream answers ResourceNotFound while it is missing and
ETagMismatch once it appears (update the stream to re-record). list_streams pages in creation order, newest first
unless ascendingOrder, 25 per page by default.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import Any

from moto.core.base_backend import BackendDict, BaseBackend

from local_iot import moto_access
from local_iot.catalog import StreamFile, StreamRecord

log = logging.getLogger(__name__)

MAX_STREAM_VERSION = 65535
DEFAULT_PAGE_SIZE = 25
MAX_TAGS_PER_RESOURCE = 50
_STREAM_ID = re.compile(r"[a-zA-Z0-9_-]+")
_TAG_KEY_PUNCTUATION = set("_.:/=+-@")
_TAG_KEY_PATTERN = "^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$"


class ApiError(Enum):
    """botocore's exception names for the stream calls, with their HTTP status."""

    INVALID_REQUEST = ("InvalidRequestException", 400)
    RESOURCE_NOT_FOUND = ("ResourceNotFoundException", 404)
    RESOURCE_ALREADY_EXISTS = ("ResourceAlreadyExistsException", 409)
    LIMIT_EXCEEDED = ("LimitExceededException", 410)
    INTERNAL_FAILURE = ("InternalFailureException", 500)

    def __init__(self, code: str, status: int) -> None:
        self.code = code
        self.status = status


class StreamApiError(Exception):
    """A request the control plane refuses; ``fields`` are extra members of the error body (resourceId...)."""

    def __init__(self, error: ApiError, message: str, **fields: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.fields = fields


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredStream:
    record: StreamRecord
    created_at: float  # epoch seconds
    last_updated_at: float
    sequence: int  # creation order, the list_streams cursor
    tags: tuple[tuple[str, str | None], ...]


def _invalid(message: str) -> StreamApiError:
    return StreamApiError(ApiError.INVALID_REQUEST, message)


def _constraint(value: Any, member: str, constraint: str) -> StreamApiError:
    return _invalid(
        f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: {constraint}"
    )


def validate_stream_id(stream_id: Any) -> str:
    if not isinstance(stream_id, str) or not 1 <= len(stream_id) <= 128:
        raise _constraint(stream_id, "streamId", "Member must have length between 1 and 128")
    if not _STREAM_ID.fullmatch(stream_id):
        raise _constraint(stream_id, "streamId", "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+")
    return stream_id


def _validate_description(description: Any) -> str:
    if not isinstance(description, str):
        raise _invalid("description must be a string")
    if len(description) > 2028:
        raise _constraint(description[:32] + "...", "description", "Member must have length less than or equal to 2028")
    if any(unicodedata.category(c).startswith("C") for c in description):
        raise _constraint(description, "description", "Member must satisfy regular expression pattern: [^\\p{C}]+")
    return description


def _validate_role_arn(role_arn: Any) -> str:
    if not isinstance(role_arn, str) or not 20 <= len(role_arn) <= 2048:
        raise _constraint(role_arn, "roleArn", "Member must have length between 20 and 2048")
    return role_arn


def _validate_files(files: Any) -> list[tuple[int, str, str, str | None]]:
    if not isinstance(files, list) or not 1 <= len(files) <= 50:
        count = len(files) if isinstance(files, list) else files
        raise _constraint(count, "files", "Member must have length between 1 and 50")
    result: list[tuple[int, str, str, str | None]] = []
    for index, entry in enumerate(files, start=1):
        where = f"files.{index}"
        if not isinstance(entry, dict):
            raise _invalid(f"{where} must be an object with fileId and s3Location")
        file_id = entry.get("fileId")
        if not isinstance(file_id, int) or isinstance(file_id, bool) or not 0 <= file_id <= 255:
            raise _constraint(file_id, f"{where}.member.fileId", "Member must be between 0 and 255")
        location = entry.get("s3Location")
        if not isinstance(location, dict):
            raise _invalid(f"{where}.member.s3Location is required: give bucket, key and (best) version")
        bucket, key, version = location.get("bucket"), location.get("key"), location.get("version")
        if not isinstance(bucket, str) or not bucket:
            raise _constraint(bucket, f"{where}.member.s3Location.bucket", "Member must have length >= 1")
        if not isinstance(key, str) or not key:
            raise _constraint(key, f"{where}.member.s3Location.key", "Member must have length >= 1")
        if version is not None and (not isinstance(version, str) or not version):
            raise _invalid(f"{where}.member.s3Location.version must be a non-empty string when given")
        result.append((file_id, bucket, key, version))
    ids = [f[0] for f in result]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise _invalid(f"fileId must be unique within a stream; repeated: {', '.join(map(str, duplicates))}")
    return result


def validate_tags(tags: Any) -> list[tuple[str, str | None]]:
    if not isinstance(tags, list):
        raise _invalid("tags must be a list of {Key, Value}")
    result: list[tuple[str, str | None]] = []
    for tag in tags:
        if not isinstance(tag, dict) or not isinstance(tag.get("Key"), str):
            raise _invalid("every tag needs a Key")
        key, value = tag["Key"], tag.get("Value")
        if not 1 <= len(key) <= 128:
            raise _constraint(key, "tags.member.Key", "Member must have length between 1 and 128")
        if any(not (unicodedata.category(c)[0] in "LZN" or c in _TAG_KEY_PUNCTUATION) for c in key):
            raise _constraint(
                key,
                "tags.member.Key",
                f"Member must satisfy regular expression pattern: {_TAG_KEY_PATTERN}",
            )
        if key.lower().startswith("aws:"):
            raise _invalid(f"tag key {key!r}: the aws: prefix is reserved for AWS use")
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise _constraint(value, "tags.member.Value", "Member must have length less than or equal to 256")
        result.append((key, value))
    if len({k for k, _ in result}) != len(result):
        raise _invalid("tag keys must be unique")
    return result


def _merge_tags(
    current: tuple[tuple[str, str | None], ...], new: list[tuple[str, str | None]]
) -> tuple[tuple[str, str | None], ...]:
    merged = dict(current)
    merged.update(new)
    if len(merged) > MAX_TAGS_PER_RESOURCE:
        raise StreamApiError(ApiError.LIMIT_EXCEEDED, f"a resource can carry at most {MAX_TAGS_PER_RESOURCE} tags")
    return tuple(merged.items())


def _file_entry(file: StreamFile) -> dict[str, Any]:
    location = {"bucket": file.bucket, "key": file.key}
    if file.version_id is not None:
        location["version"] = file.version_id
    return {"fileId": file.file_id, "s3Location": location}


def _encode_token(sequence: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": sequence}).encode()).decode()


def _decode_token(token: Any) -> int:
    try:
        value = json.loads(base64.urlsafe_b64decode(str(token).encode()))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise _invalid("nextToken is not a token this service returned") from exc
    if not isinstance(value, int):
        raise _invalid("nextToken is not a token this service returned")
    return value


class StreamsBackend(BaseBackend):
    """Streams and IoT resource tags of one account and region."""

    def __init__(self, region_name: str, account_id: str) -> None:
        super().__init__(region_name, account_id)
        self._lock = threading.Lock()
        self._streams: dict[str, StoredStream] = {}
        self._sequence = 0
        self._other_tags: dict[str, tuple[tuple[str, str | None], ...]] = {}  # tags of non-stream IoT ARNs

    def __getstate__(self) -> dict[str, Any]:  # pickled by local_iot.persistence (the lock is not)
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def stream_arn(self, stream_id: str) -> str:
        return f"arn:{self.partition}:iot:{self.region_name}:{self.account_id}:stream/{stream_id}"

    # -- what the stream service reads -------------------------------------------------------------------------

    def get_record(self, stream_id: str) -> StreamRecord | None:
        stored = self._streams.get(stream_id)  # a dict read is atomic; records are immutable
        return stored.record if stored else None

    # -- the five calls ----------------------------------------------------------------------------------------

    def create_stream(
        self, stream_id: Any, *, files: Any, role_arn: Any, description: Any = None, tags: Any = None
    ) -> StreamRecord:
        stream_id = validate_stream_id(stream_id)
        if files is None:
            raise _invalid("files is required: give 1 to 50 {fileId, s3Location}")
        if role_arn is None:
            raise _invalid("roleArn is required: a role that iot.amazonaws.com can assume to read the files")
        entries = _validate_files(files)
        role_arn = _validate_role_arn(role_arn)
        text = _validate_description(description) if description is not None else ""
        tag_list = validate_tags(tags) if tags is not None else []
        stream_files = self._record_files(entries)  # S3 look-ups outside the lock
        with self._lock:
            if stream_id in self._streams:
                arn = self.stream_arn(stream_id)
                raise StreamApiError(
                    ApiError.RESOURCE_ALREADY_EXISTS,
                    f"Stream {stream_id} already exists: use update_stream, or delete it first",
                    resourceId=stream_id,
                    resourceArn=arn,
                )
            now = time.time()
            self._sequence += 1
            record = StreamRecord(
                stream_id=stream_id,
                stream_arn=self.stream_arn(stream_id),
                version=1,
                description=text,
                role_arn=role_arn,
                files=stream_files,
            )
            self._streams[stream_id] = StoredStream(
                record=record,
                created_at=now,
                last_updated_at=now,
                sequence=self._sequence,
                tags=_merge_tags((), tag_list),
            )
        log.info("created stream %s (%d files)", stream_id, len(stream_files))
        return record

    def describe_stream(self, stream_id: Any) -> StoredStream:
        stream_id = validate_stream_id(stream_id)
        stored = self._streams.get(stream_id)
        if stored is None:
            raise self._not_found(stream_id)
        return stored

    def update_stream(
        self, stream_id: Any, *, files: Any = None, role_arn: Any = None, description: Any = None
    ) -> StreamRecord:
        """Version + 1. Given files replace the old ones and their ETags are recorded again; omitted fields stay."""
        stream_id = validate_stream_id(stream_id)
        entries = _validate_files(files) if files is not None else None
        role = _validate_role_arn(role_arn) if role_arn is not None else None
        text = _validate_description(description) if description is not None else None
        stream_files = self._record_files(entries) if entries is not None else None
        with self._lock:
            stored = self._streams.get(stream_id)
            if stored is None:
                raise self._not_found(stream_id)
            old = stored.record
            if old.version >= MAX_STREAM_VERSION:
                raise StreamApiError(
                    ApiError.LIMIT_EXCEEDED,
                    f"Stream {stream_id} is at version {MAX_STREAM_VERSION}: create a new stream",
                )
            record = dataclasses.replace(
                old,
                version=old.version + 1,
                files=stream_files if stream_files is not None else old.files,
                role_arn=role if role is not None else old.role_arn,
                description=text if text is not None else old.description,
            )
            self._streams[stream_id] = dataclasses.replace(stored, record=record, last_updated_at=time.time())
        log.info("updated stream %s to version %d", stream_id, record.version)
        return record

    def delete_stream(self, stream_id: Any) -> None:
        stream_id = validate_stream_id(stream_id)
        with self._lock:
            if self._streams.pop(stream_id, None) is None:
                raise self._not_found(stream_id)
        log.info("deleted stream %s", stream_id)

    def list_streams(
        self, *, max_results: int | None = None, next_token: str | None = None, ascending: bool = False
    ) -> tuple[list[StreamRecord], str | None]:
        limit = DEFAULT_PAGE_SIZE if max_results is None else max_results
        if not 1 <= limit <= 250:
            raise _constraint(limit, "maxResults", "Member must have value between 1 and 250")
        after = _decode_token(next_token) if next_token else None
        with self._lock:
            streams = list(self._streams.values())
        ordered = sorted(streams, key=lambda s: s.sequence, reverse=not ascending)
        if after is not None:
            ordered = [s for s in ordered if (s.sequence > after if ascending else s.sequence < after)]
        page = ordered[:limit]
        token = _encode_token(page[-1].sequence) if len(ordered) > limit else None
        return [s.record for s in page], token

    def bump_version(self, stream_id: str) -> int:
        """update_stream with the same files (their ETags recorded again). Returns the new version."""
        stored = self.describe_stream(stream_id)
        files = [_file_entry(f) for f in stored.record.files]
        return self.update_stream(stream_id, files=files).version

    # -- tags (moto's IoT has none) ----------------------------------------------------------------------------

    def tag_resource(self, resource_arn: Any, tags: Any) -> None:
        tag_list = validate_tags(tags)
        with self._lock:
            stream_id = self._stream_id_of(resource_arn)
            if stream_id is None:
                self._other_tags[resource_arn] = _merge_tags(self._other_tags.get(resource_arn, ()), tag_list)
                return
            stored = self._streams[stream_id]
            self._streams[stream_id] = dataclasses.replace(stored, tags=_merge_tags(stored.tags, tag_list))

    def untag_resource(self, resource_arn: Any, tag_keys: Any) -> None:
        if not isinstance(tag_keys, list) or not all(isinstance(k, str) for k in tag_keys):
            raise _invalid("tagKeys must be a list of strings")
        with self._lock:
            stream_id = self._stream_id_of(resource_arn)
            current = self._streams[stream_id].tags if stream_id else self._other_tags.get(resource_arn, ())
            kept = tuple((k, v) for k, v in current if k not in tag_keys)
            if stream_id is None:
                self._other_tags[resource_arn] = kept
            else:
                self._streams[stream_id] = dataclasses.replace(self._streams[stream_id], tags=kept)

    def list_tags(self, resource_arn: Any) -> tuple[tuple[str, str | None], ...]:
        with self._lock:
            stream_id = self._stream_id_of(resource_arn)
            return self._streams[stream_id].tags if stream_id else self._other_tags.get(resource_arn, ())

    # -- helpers -----------------------------------------------------------------------------------------------

    def _stream_id_of(self, resource_arn: Any) -> str | None:
        """The stream id for a stream ARN of this account/region (which must exist), None for another IoT ARN."""
        parts = resource_arn.split(":", 5) if isinstance(resource_arn, str) else []
        if len(parts) != 6 or parts[0] != "arn":
            raise _invalid(f"resourceArn {resource_arn!r} is not an ARN")
        resource = parts[5]
        if not resource.startswith("stream/"):
            return None
        stream_id = resource.removeprefix("stream/")
        if resource_arn != self.stream_arn(stream_id) or stream_id not in self._streams:
            raise StreamApiError(ApiError.RESOURCE_NOT_FOUND, f"No stream with ARN {resource_arn}")
        return stream_id

    def _not_found(self, stream_id: str) -> StreamApiError:
        return StreamApiError(
            ApiError.RESOURCE_NOT_FOUND, f"Stream {stream_id} does not exist: check the streamId and region"
        )

    def _record_files(self, entries: list[tuple[int, str, str, str | None]]) -> tuple[StreamFile, ...]:
        files = []
        for file_id, bucket, key, version in entries:
            try:
                etag = moto_access.object_info(self.account_id, self.region_name, bucket, key, version).etag
            except moto_access.ObjectMissing as exc:
                log.warning("stream file %d: %s; devices get ResourceNotFound until it exists", file_id, exc)
                etag = ""
            files.append(StreamFile(file_id=file_id, bucket=bucket, key=key, version_id=version, etag=etag))
        return tuple(files)


streams_backends: BackendDict[StreamsBackend] = BackendDict(StreamsBackend, "iot")
