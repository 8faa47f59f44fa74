"""Firmware: deterministic test images, the bucket checks, and uploads recorded with version, size and SHA-256.

A stream pins each file to an S3 object version. In an unversioned bucket an overwrite replaces the object the
stream recorded and devices get ``ETagMismatch``; hence a versioned bucket is required unless forced.

Memory stays flat whatever the size: images are generated and files read in chunks of ``CHUNK_SIZE`` (SHAKE-256
is an extendable-output function; ``cryptography``'s ``XOFHash.squeeze`` yields the very bytes of
``hashlib.shake_256(...).digest(size)`` piece by piece), hashed as they go, and uploaded with ``put_object`` up to
``MULTIPART_THRESHOLD`` (8 MiB, boto3's own default) and as an S3 multipart upload of ``PART_SIZE`` parts above
it. A file larger than a stream can deliver (``validation.MAX_STREAM_FILE_SIZE``) is refused before anything.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from .aws import Api
from .errors import InputError, ProvisionerError
from .manifest import RUN_ID_KEY, BucketRecord, FirmwareObject, ManifestStore
from .validation import MAX_STREAM_FILE_SIZE, check_bucket, check_file_ids, check_stream_file_size, parse_size

log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "iot-stream-sim"
_FILE_OPTION = re.compile(r"(\d{1,3})=(.+)")
#: Generated and read in pieces of this size (the most a source holds in memory at once).
CHUNK_SIZE = 8 * 1024 * 1024
#: Up to this size one put_object (the body in memory); above, a multipart upload. boto3's default threshold.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
#: Multipart part size: 12 GiB (MAX_STREAM_FILE_SIZE) / 8 MiB = 1537 parts, well below S3's 10000.
PART_SIZE = 8 * 1024 * 1024
assert MAX_STREAM_FILE_SIZE // PART_SIZE < 10_000


def _label(seed: int, index: int) -> bytes:
    return f"iot-stream-sim firmware:{seed}:{index}".encode()


def generate_firmware(size: int, seed: int, index: int = 0) -> bytes:
    """``size`` deterministic pseudo-random bytes: SHAKE-256 of ``b"iot-stream-sim firmware:<seed>:<index>"``."""
    return hashlib.shake_256(_label(seed, index)).digest(size)


def generate_firmware_chunks(size: int, seed: int, index: int = 0, *, chunk: int = CHUNK_SIZE) -> Iterator[bytes]:
    """``generate_firmware(size, seed, index)`` in pieces of at most ``chunk`` bytes, in constant memory."""
    if size <= 0:
        return
    xof = hashes.XOFHash(hashes.SHAKE256(digest_size=size))
    xof.update(_label(seed, index))
    remaining = size
    while remaining:
        n = min(chunk, remaining)
        yield xof.squeeze(n)
        remaining -= n


@dataclass(frozen=True, kw_only=True, slots=True)
class FirmwareSource:
    """One file to upload: a local file or a generated image."""

    file_id: int
    name: str
    path: Path | None = None
    size: int | None = None  # generated images only
    seed: int = 0
    index: int = 0

    @property
    def source(self) -> str:
        if self.path is not None:
            return f"file:{self.path}"
        return f"generate:size={self.size},seed={self.seed},index={self.index}"

    def read(self) -> bytes:
        """The whole content (small files; uploads use ``chunks``)."""
        return b"".join(self.chunks())

    def length(self) -> int:
        if self.path is None:
            assert self.size is not None
            return self.size
        try:
            return self.path.stat().st_size
        except OSError as e:
            raise InputError(f"cannot read firmware file {self.path}: {e.strerror}") from e

    def chunks(self, chunk: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The content in pieces of at most ``chunk`` bytes."""
        if self.path is None:
            assert self.size is not None
            yield from generate_firmware_chunks(self.size, self.seed, self.index, chunk=chunk)
            return
        try:
            with self.path.open("rb") as f:
                while piece := f.read(chunk):
                    yield piece
        except OSError as e:
            raise InputError(f"cannot read firmware file {self.path}: {e.strerror}") from e

    def sha256(self, checkpoint: Callable[[], None] = lambda: None) -> str:
        """SHA-256 of the content, computed in chunks; ``checkpoint`` runs between them (SIGINT checks)."""
        digest = hashlib.sha256()
        for piece in self.chunks():
            checkpoint()
            digest.update(piece)
        return digest.hexdigest()


def plan_sources(files: list[str], generate: list[str], seed: int) -> list[FirmwareSource]:
    """Sources from ``--generate SIZE`` (first) and ``--file [ID=]PATH`` options, with file ids assigned.

    A source without an explicit id gets its position in that order. Raises InputError for a missing file, a bad
    size, more than 50 files or duplicate ids.
    """
    sources: list[FirmwareSource] = []
    for index, size_text in enumerate(generate):
        size = check_stream_file_size(parse_size(size_text), f"--generate {size_text}")
        sources.append(
            FirmwareSource(
                file_id=index, name=f"firmware-{size}-seed{seed}-{index}.bin", size=size, seed=seed, index=index
            )
        )
    for text in files:
        match = _FILE_OPTION.fullmatch(text)
        file_id, path_text = (int(match.group(1)), match.group(2)) if match else (len(sources), text)
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise InputError(f"firmware file {path} does not exist or is not a file", hint="check the --file path")
        check_stream_file_size(path.stat().st_size, f"firmware file {path}")
        sources.append(FirmwareSource(file_id=file_id, name=path.name, path=path.resolve()))
    check_file_ids([s.file_id for s in sources])
    return sources


def object_prefix(key_prefix: str, run_id: str) -> str:
    """``<key prefix>/<run id>/``: every object of a run lives below it, so cleanup may delete all of it."""
    return f"{key_prefix.strip('/')}/{run_id}/" if key_prefix.strip("/") else f"{run_id}/"


def object_key(prefix: str, source: FirmwareSource) -> str:
    """``<object prefix><file id>/<name>``."""
    return f"{prefix}{source.file_id}/{source.name}"


@dataclass(frozen=True, kw_only=True, slots=True)
class BucketState:
    name: str
    exists: bool
    versioned: bool


def inspect_bucket(api: Api, name: str) -> BucketState:
    """Read-only: does the bucket exist and is versioning enabled."""
    check_bucket(name)
    if api.maybe(api.s3.head_bucket, Bucket=name) is None:
        return BucketState(name=name, exists=False, versioned=False)
    status = api.read(api.s3.get_bucket_versioning, Bucket=name).get("Status")
    return BucketState(name=name, exists=True, versioned=status == "Enabled")


def check_bucket_usable(state: BucketState, *, create: bool, force_unversioned: bool, created_by_run: bool) -> None:
    """Raise InputError when the bucket cannot be used as asked (before anything is created)."""
    if not state.exists and not create:
        raise InputError(f"bucket {state.name} does not exist", hint="add --create-bucket to create it (versioned)")
    if state.exists and not state.versioned and not created_by_run:
        if force_unversioned:
            log.warning("bucket %s is not versioned: overwriting a firmware object breaks the stream", state.name)
        else:
            raise InputError(
                f"bucket {state.name} is not versioned (an overwrite would break streams with ETagMismatch)",
                hint=f"enable versioning (aws s3api put-bucket-versioning --bucket {state.name} "
                "--versioning-configuration Status=Enabled) or pass --force-unversioned",
            )


def ensure_bucket(api: Api, store: ManifestStore, state: BucketState, *, key_prefix: str) -> BucketRecord:
    """Create the bucket (versioned, tagged with the run id) when it does not exist; record it."""
    run_id = store.manifest.run_id
    recorded = store.manifest.bucket
    if recorded is not None and recorded.name == state.name:
        prefix = recorded.object_prefix  # a resumed run keeps its prefix even if --key-prefix changed
    else:
        prefix = object_prefix(key_prefix, run_id)
    created = recorded is not None and recorded.name == state.name and recorded.created
    if not state.exists:
        params = {} if api.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": api.region}}
        api.write(api.s3.create_bucket, Bucket=state.name, **params)
        created = True
        store.change(bucket=BucketRecord(name=state.name, created=True, object_prefix=prefix))
        api.write(
            api.s3.put_bucket_tagging,
            Bucket=state.name,
            Tagging={"TagSet": [{"Key": RUN_ID_KEY, "Value": run_id}]},
        )
    if created and not state.versioned:
        api.write(api.s3.put_bucket_versioning, Bucket=state.name, VersioningConfiguration={"Status": "Enabled"})
    record = BucketRecord(name=state.name, created=created, object_prefix=prefix)
    store.change(bucket=record)
    return record


def upload(api: Api, store: ManifestStore, sources: list[FirmwareSource]) -> list[FirmwareObject]:
    """Upload every source (skipping those already recorded with the same content and still present)."""
    bucket = store.manifest.bucket
    if bucket is None:
        raise InputError("no bucket recorded for this run", hint="pass --bucket")
    out: list[FirmwareObject] = []
    for source in sources:
        size = source.length()
        key = object_key(bucket.object_prefix, source)
        recorded = store.manifest.firmware_file(source.file_id)
        if (  # a resumed run: the same content, still there?
            recorded
            and (recorded.key, recorded.size) == (key, size)
            and recorded.sha256 == source.sha256(api.checkpoint)
            and _present(api, recorded)
        ):
            log.info("file %d already uploaded as s3://%s/%s", source.file_id, recorded.bucket, recorded.key)
            out.append(recorded)
            continue
        if size <= MULTIPART_THRESHOLD:
            body = source.read()
            size, digest = len(body), hashlib.sha256(body).hexdigest()
            answer = api.write(
                api.s3.put_object,
                dry_result={"VersionId": "<new version>", "ETag": '"<etag>"'},
                Bucket=bucket.name,
                Key=key,
                Body=body,
                ContentType="application/octet-stream",
            )
        else:  # hashed while it goes up: one pass over the content
            answer, digest = _upload_parts(api, source, bucket=bucket.name, key=key, size=size)
        record = FirmwareObject(
            file_id=source.file_id,
            bucket=bucket.name,
            key=key,
            version_id=answer.get("VersionId") if answer.get("VersionId") not in (None, "null") else None,
            size=size,
            sha256=digest,
            etag=str(answer.get("ETag", "")).strip('"'),
            source=source.source,
        )
        others = tuple(f for f in store.manifest.firmware if f.file_id != source.file_id)
        store.change(firmware=tuple(sorted((*others, record), key=lambda f: f.file_id)))
        log.info("uploaded file %d (%d bytes, sha256 %s) to s3://%s/%s", source.file_id, size, digest, bucket.name, key)
        out.append(record)
    return out


def _upload_parts(api: Api, source: FirmwareSource, *, bucket: str, key: str, size: int) -> tuple[dict[str, Any], str]:
    """A multipart upload in ``PART_SIZE`` parts (one in memory at a time); returns S3's answer and the SHA-256
    of the bytes sent. Any failure or SIGINT aborts it, so no half upload is left behind; the object exists (and
    is recorded) only after ``complete_multipart_upload``."""
    parts = -(-size // PART_SIZE)
    dry = {"VersionId": "<new version>", "ETag": f'"<etag>-{parts}"'}
    if api.dry_run:
        api.write(api.s3.create_multipart_upload, Bucket=bucket, Key=key, ContentType="application/octet-stream")
        api.plan_local("upload_parts", parts=parts, part_size=PART_SIZE, size=size)
        completed: dict[str, Any] = api.write(api.s3.complete_multipart_upload, dry_result=dry, Bucket=bucket, Key=key)
        return completed, source.sha256(api.checkpoint)
    started = api.write(api.s3.create_multipart_upload, Bucket=bucket, Key=key, ContentType="application/octet-stream")
    upload_id = str(started["UploadId"])
    try:
        digest = hashlib.sha256()
        sent = 0
        done = []
        for number, body in enumerate(source.chunks(PART_SIZE), 1):
            digest.update(body)
            sent += len(body)
            answer = api.write(
                api.s3.upload_part, Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
            done.append({"PartNumber": number, "ETag": answer["ETag"]})
        if sent != size:
            raise InputError(f"firmware file {source.path} changed size while it was uploaded ({size} -> {sent})")
        result: dict[str, Any] = api.write(
            api.s3.complete_multipart_upload,
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": done},
        )
        return result, digest.hexdigest()
    except BaseException:
        try:
            api.call_now(api.s3.abort_multipart_upload, Bucket=bucket, Key=key, UploadId=upload_id)
        except ProvisionerError as e:
            log.warning("could not abort the multipart upload %s of s3://%s/%s: %s", upload_id, bucket, key, e)
        raise


def _present(api: Api, obj: FirmwareObject) -> bool:
    params = {"Bucket": obj.bucket, "Key": obj.key}
    if obj.version_id:
        params["VersionId"] = obj.version_id
    return api.maybe(api.s3.head_object, **params) is not None
