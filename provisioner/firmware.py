"""Firmware: deterministic test images, the bucket checks, and uploads recorded with version, size and SHA-256.

A stream pins each file to an S3 object version. In an unversioned bucket an overwrite replaces the object the
stream recorded and devices get ``ETagMismatch``; hence a versioned bucket is required unless forced.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .aws import Api
from .errors import InputError
from .manifest import RUN_ID_KEY, BucketRecord, FirmwareObject, ManifestStore
from .validation import check_bucket, check_file_ids, parse_size

log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "iot-stream-sim"
_FILE_OPTION = re.compile(r"(\d{1,3})=(.+)")


def generate_firmware(size: int, seed: int, index: int = 0) -> bytes:
    """``size`` deterministic pseudo-random bytes: SHAKE-256 of ``b"iot-stream-sim firmware:<seed>:<index>"``."""
    return hashlib.shake_256(f"iot-stream-sim firmware:{seed}:{index}".encode()).digest(size)


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
        if self.path is not None:
            try:
                return self.path.read_bytes()
            except OSError as e:
                raise InputError(f"cannot read firmware file {self.path}: {e.strerror}") from e
        assert self.size is not None
        return generate_firmware(self.size, self.seed, self.index)


def plan_sources(files: list[str], generate: list[str], seed: int) -> list[FirmwareSource]:
    """Sources from ``--generate SIZE`` (first) and ``--file [ID=]PATH`` options, with file ids assigned.

    A source without an explicit id gets its position in that order. Raises InputError for a missing file, a bad
    size, more than 50 files or duplicate ids.
    """
    sources: list[FirmwareSource] = []
    for index, size_text in enumerate(generate):
        size = parse_size(size_text)
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
        data = source.read()
        digest = hashlib.sha256(data).hexdigest()
        key = object_key(bucket.object_prefix, source)
        recorded = store.manifest.firmware_file(source.file_id)
        if recorded and recorded.sha256 == digest and recorded.key == key and _present(api, recorded):
            log.info("file %d already uploaded as s3://%s/%s", source.file_id, recorded.bucket, recorded.key)
            out.append(recorded)
            continue
        answer = api.write(
            api.s3.put_object,
            dry_result={"VersionId": "<new version>", "ETag": '"<etag>"'},
            Bucket=bucket.name,
            Key=key,
            Body=data,
            ContentType="application/octet-stream",
        )
        record = FirmwareObject(
            file_id=source.file_id,
            bucket=bucket.name,
            key=key,
            version_id=answer.get("VersionId") if answer.get("VersionId") not in (None, "null") else None,
            size=len(data),
            sha256=digest,
            etag=str(answer.get("ETag", "")).strip('"'),
            source=source.source,
        )
        others = tuple(f for f in store.manifest.firmware if f.file_id != source.file_id)
        store.change(firmware=tuple(sorted((*others, record), key=lambda f: f.file_id)))
        log.info(
            "uploaded file %d (%d bytes, sha256 %s) to s3://%s/%s", source.file_id, len(data), digest, bucket.name, key
        )
        out.append(record)
    return out


def _present(api: Api, obj: FirmwareObject) -> bool:
    params = {"Bucket": obj.bucket, "Key": obj.key}
    if obj.version_id:
        params["VersionId"] = obj.version_id
    return api.maybe(api.s3.head_object, **params) is not None
