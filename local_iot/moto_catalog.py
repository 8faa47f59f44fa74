"""``MotoCatalog``: the ``Catalog`` the stream service uses, read straight from moto's in-process backends.

How this works: every call looks the backends up afresh (moto's reset replaces them) and reads records that are
immutable or guarded by moto's per-object lock, so the service may call it from its own thread while moto serves
HTTP on others. ``check_access`` decides what AWS would decide when IoT assumes the stream role and reads the
object, in this order: the role exists (exact ARN) -> its trust policy lets ``iot.amazonaws.com`` call
``sts:AssumeRole`` (with ``aws:SourceAccount`` = the account and ``aws:SourceArn`` = the stream ARN as condition
keys) -> its inline and attached policies allow ``s3:GetObject`` (and ``s3:GetObjectVersion`` for a pinned version)
on ``arn:aws:s3:::bucket/key`` (see ``local_iot.iam_eval`` for what is evaluated) -> the object/version exists
-> its ETag is the one recorded by create/update_stream. Bucket policies and SCPs are not evaluated.
"""

from __future__ import annotations

from device_sim.protocol import ErrorCode
from local_iot import moto_access
from local_iot.catalog import CatalogError, StreamFile, StreamRecord
from local_iot.iam_eval import AccessRequest, is_allowed
from local_iot.streams_backend import StreamApiError, StreamsBackend, streams_backends

IOT_SERVICE_PRINCIPAL = "iot.amazonaws.com"


class MotoCatalog:
    """Streams, roles and objects of one account and region of the in-process moto."""

    def __init__(self, *, account_id: str, region: str) -> None:
        self.account_id = account_id
        self.region = region

    def _backend(self) -> StreamsBackend:
        return streams_backends[self.account_id][self.region]

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        return self._backend().get_record(stream_id)

    def check_access(self, stream: StreamRecord, file: StreamFile) -> None:
        self._check_role(stream, file)
        self._current_etag(file)

    def read(self, file: StreamFile) -> bytes:
        try:
            data, etag = moto_access.object_bytes(self.account_id, self.region, file.bucket, file.key, file.version_id)
        except moto_access.ObjectMissing as exc:
            raise CatalogError(ErrorCode.RESOURCE_NOT_FOUND, _missing_message(file, exc)) from exc
        if etag != file.etag:
            raise CatalogError(ErrorCode.ETAG_MISMATCH, _etag_message(file))
        return data

    def bump_stream_version(self, stream_id: str) -> int:
        try:
            return self._backend().bump_version(stream_id)
        except StreamApiError as exc:
            raise CatalogError(ErrorCode.RESOURCE_NOT_FOUND, exc.message) from exc

    def overwrite_object(self, file: StreamFile, data: bytes) -> None:
        try:
            moto_access.put_object(self.account_id, self.region, file.bucket, file.key, data)
        except moto_access.ObjectMissing as exc:
            raise CatalogError(ErrorCode.RESOURCE_NOT_FOUND, _missing_message(file, exc)) from exc

    # -- the checks --------------------------------------------------------------------------------------------

    def _check_role(self, stream: StreamRecord, file: StreamFile) -> None:
        try:
            role = moto_access.role_info(self.account_id, self.region, stream.role_arn)
        except moto_access.RoleMissing as exc:
            raise CatalogError(
                ErrorCode.UNAUTHORIZED,
                f"The stream role {stream.role_arn} does not exist: create it or update the stream's roleArn.",
            ) from exc
        assume = AccessRequest(
            action="sts:AssumeRole",
            service_principal=IOT_SERVICE_PRINCIPAL,
            context={"aws:SourceAccount": self.account_id, "aws:SourceArn": stream.stream_arn},
        )
        if not is_allowed([role.trust_policy], assume):
            raise CatalogError(
                ErrorCode.UNAUTHORIZED,
                f"The stream role {role.arn} cannot be assumed by {IOT_SERVICE_PRINCIPAL}: its trust policy must "
                "allow sts:AssumeRole for that service (conditions on aws:SourceAccount/aws:SourceArn must match).",
            )
        resource = f"arn:{moto_access.partition(self.region)}:s3:::{file.bucket}/{file.key}"
        actions = ["s3:GetObject"] + (["s3:GetObjectVersion"] if file.version_id is not None else [])
        for action in actions:
            if not is_allowed(role.permission_policies, AccessRequest(action=action, resource=resource)):
                raise CatalogError(
                    ErrorCode.UNAUTHORIZED,
                    f"The stream role {role.arn} may not {action} on {resource}: allow it in the role's policy.",
                )

    def _current_etag(self, file: StreamFile) -> str:
        try:
            info = moto_access.object_info(self.account_id, self.region, file.bucket, file.key, file.version_id)
        except moto_access.ObjectMissing as exc:
            raise CatalogError(ErrorCode.RESOURCE_NOT_FOUND, _missing_message(file, exc)) from exc
        if info.etag != file.etag:
            raise CatalogError(ErrorCode.ETAG_MISMATCH, _etag_message(file))
        return info.etag


def _missing_message(file: StreamFile, exc: Exception) -> str:
    return f"The S3 object of file {file.file_id} is gone ({exc}): restore it or update the stream."


def _etag_message(file: StreamFile) -> str:
    return (
        f"The S3 object s3://{file.bucket}/{file.key} of file {file.file_id} changed after the stream recorded it: "
        "update the stream (pin s3Location.version to avoid this)."
    )
