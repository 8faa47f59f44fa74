"""The one place that reaches into moto's in-process S3 and IAM backends.

The stream backend records ETags at create/update time and the catalog checks roles and objects on every
GetStream request; both go through these functions instead of the HTTP API (no round trip, no credentials).
moto's own exceptions and model classes stay behind this boundary: callers see ``ObjectMissing`` and
``RoleMissing`` and plain values.

Thread safety: moto serves HTTP requests on several threads and has no global lock; the stream service calls
in from its own thread. Reading a dict that another thread mutates is safe under the GIL; the one shared cursor
(a ``FakeKey``'s value buffer, used both for the ETag and for the bytes) is guarded by the key's own lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moto.iam.models import iam_backends
from moto.s3.exceptions import MissingBucket
from moto.s3.models import FakeKey, s3_backends
from moto.utilities.utils import get_partition


class ObjectMissing(Exception):
    """The bucket, the key or the requested version does not exist (or the current version is a delete marker)."""


class RoleMissing(Exception):
    """No IAM role with this ARN exists in the account."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectInfo:
    bucket: str
    key: str
    version_id: str  # "null" for an object written while versioning was off
    etag: str  # as S3 returns it, with the double quotes


@dataclass(frozen=True, kw_only=True, slots=True)
class RoleInfo:
    arn: str
    trust_policy: str  # JSON text
    permission_policies: tuple[str, ...]  # JSON texts: inline policies, then default versions of attached ones


def partition(region: str) -> str:
    """The ARN partition of a region: aws, aws-cn, aws-us-gov..."""
    return str(get_partition(region))


def _s3(account_id: str, region: str) -> Any:
    return s3_backends[account_id][get_partition(region)]


def _fake_key(account_id: str, region: str, bucket: str, key: str, version_id: str | None) -> FakeKey:
    try:
        obj = _s3(account_id, region).get_object(bucket, key, version_id)
    except MissingBucket as exc:
        raise ObjectMissing(f"bucket {bucket!r} does not exist") from exc
    if not isinstance(obj, FakeKey):  # None, or a delete marker when asked for a delete marker's version
        where = f"s3://{bucket}/{key}" + (f" version {version_id}" if version_id else "")
        raise ObjectMissing(f"{where} does not exist")
    return obj


def object_info(account_id: str, region: str, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
    """The object's (pinned or current) version and ETag. Raises ObjectMissing."""
    obj = _fake_key(account_id, region, bucket, key, version_id)
    with obj.lock:  # etag is computed lazily by seeking the shared value buffer
        etag = obj.etag
    return ObjectInfo(bucket=bucket, key=key, version_id=str(obj.version_id), etag=etag)


def object_bytes(account_id: str, region: str, bucket: str, key: str, version_id: str | None) -> tuple[bytes, str]:
    """The object's bytes and ETag. Raises ObjectMissing."""
    obj = _fake_key(account_id, region, bucket, key, version_id)
    with obj.lock:
        etag = obj.etag
    return obj.value, etag  # ``value`` takes the key's lock itself


def put_object(account_id: str, region: str, bucket: str, key: str, data: bytes) -> ObjectInfo:
    """Write a new object (a new current version when the bucket is versioned). Raises ObjectMissing (no bucket)."""
    try:
        obj = _s3(account_id, region).put_object(bucket, key, data)
    except MissingBucket as exc:
        raise ObjectMissing(f"bucket {bucket!r} does not exist") from exc
    with obj.lock:
        etag = obj.etag
    return ObjectInfo(bucket=bucket, key=key, version_id=str(obj.version_id), etag=etag)


def role_info(account_id: str, region: str, role_arn: str) -> RoleInfo:
    """The role with exactly this ARN (path included) and its policy documents. Raises RoleMissing."""
    iam = iam_backends[account_id][get_partition(region)]
    role = next((r for r in list(iam.roles.values()) if r.arn == role_arn), None)
    if role is None:
        raise RoleMissing(role_arn)
    documents = [str(doc) for doc in list(role.policies.values())]
    for policy in list(role.managed_policies.values()):
        documents.extend(str(v.document) for v in policy.versions if v.is_default)
    return RoleInfo(
        arn=role.arn, trust_policy=str(role.assume_role_policy_document), permission_policies=tuple(documents)
    )
