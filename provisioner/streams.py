"""Streams: create (files pinned to object versions, run-id tag and description marker), update, describe, list,
delete. Input is checked against docs/protocol.md section 1 before AWS is called.

A role created moments ago may not be assumable by AWS IoT yet (IAM is eventually consistent); ``create_stream``
then answers InvalidRequestException about the role. When the role was created by this run, the call is retried
with bounded backoff (``ROLE_PROPAGATION_BACKOFF``); a given role fails at once with a hint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .aws import Api
from .errors import AlreadyExists, AwsError
from .manifest import RUN_ID_KEY, RUN_ID_MARKER, FirmwareObject, ManifestStore, StreamFileRecord, StreamRecord
from .pacing import ROLE_PROPAGATION_BACKOFF, Backoff
from .validation import (
    StreamFileSpec,
    check_description,
    check_role_arn,
    check_stream_files,
    check_stream_id,
    check_tags,
)

log = logging.getLogger(__name__)

DEFAULT_DESCRIPTION = "iot-stream-sim firmware stream"


def stream_description(description: str, run_id: str) -> str:
    """The description with the run-id marker that ``cleanup --run-id`` looks for."""
    return check_description(f"{description} {RUN_ID_MARKER.format(run_id=run_id)}".strip())


def file_specs(objects: Sequence[FirmwareObject]) -> list[StreamFileSpec]:
    return [StreamFileSpec(file_id=o.file_id, bucket=o.bucket, key=o.key, version_id=o.version_id) for o in objects]


def files_param(files: Sequence[StreamFileSpec]) -> list[dict[str, Any]]:
    """The ``files`` request parameter: every file pinned to its version when it has one."""
    out = []
    for f in sorted(files, key=lambda f: f.file_id):
        location: dict[str, str] = {"bucket": f.bucket, "key": f.key}
        if f.version_id:
            location["version"] = f.version_id
        out.append({"fileId": f.file_id, "s3Location": location})
    return out


def _records(files: Sequence[StreamFileSpec]) -> tuple[StreamFileRecord, ...]:
    return tuple(
        StreamFileRecord(file_id=f.file_id, bucket=f.bucket, key=f.key, version_id=f.version_id)
        for f in sorted(files, key=lambda f: f.file_id)
    )


def _role_not_ready(error: AwsError) -> bool:
    text = error.aws_message.lower()
    return error.code == "InvalidRequestException" and "role" in text and "assum" in text


def check_stream_free(api: Api, stream_id: str) -> None:
    """Read-only: raise AlreadyExists when the stream id is taken."""
    check_stream_id(stream_id)
    if api.maybe(api.iot.describe_stream, streamId=stream_id) is not None:
        raise AlreadyExists(
            f"stream {stream_id} already exists",
            service="iot",
            operation="create_stream",
            code="ResourceAlreadyExistsException",
            hint="use `provisioner stream update` or another --stream-id",
        )


def create_stream(
    api: Api,
    store: ManifestStore,
    *,
    stream_id: str,
    description: str,
    files: Sequence[StreamFileSpec],
    role_arn: str,
    retry_role: bool,
    backoff: Backoff = ROLE_PROPAGATION_BACKOFF,
) -> StreamRecord:
    """create_stream with the run-id tag; recorded in the manifest. ``retry_role``: the role is brand new."""
    run_id = store.manifest.run_id
    check_stream_id(stream_id)
    check_stream_files(files)
    check_role_arn(role_arn)
    full_description = stream_description(description, run_id)
    params: dict[str, Any] = {
        "streamId": stream_id,
        "description": full_description,
        "files": files_param(files),
        "roleArn": role_arn,
        "tags": check_tags({RUN_ID_KEY: run_id}),
    }
    identity = api.identity()
    dry = {
        "streamId": stream_id,
        "streamArn": f"arn:{identity.partition}:iot:{api.region}:{identity.account_id}:stream/{stream_id}",
        "streamVersion": 1,
    }
    delays = backoff.delays() if retry_role else iter(())
    while True:
        try:
            answer = api.write(api.iot.create_stream, dry_result=dry, **params)
            break
        except AwsError as e:
            if not _role_not_ready(e):
                raise
            delay = next(delays, None)
            if delay is None:
                e.hint = e.hint or "the role cannot be assumed by iot.amazonaws.com: check its trust policy"
                raise
            log.info("role %s not assumable yet (IAM propagation); retrying create_stream in %.0f s", role_arn, delay)
            api.sleep(delay)
    record = StreamRecord(
        stream_id=str(answer.get("streamId", stream_id)),
        stream_arn=str(answer["streamArn"]),
        version=int(answer.get("streamVersion", 1)),
        description=full_description,
        role_arn=role_arn,
        files=_records(files),
    )
    store.change(stream=record)
    return record


@dataclass(frozen=True, kw_only=True, slots=True)
class VersionChange:
    stream_id: str
    old_version: int
    new_version: int


def update_stream(
    api: Api,
    store: ManifestStore,
    *,
    files: Sequence[StreamFileSpec] | None = None,
    description: str | None = None,
) -> VersionChange:
    """update_stream of the run's stream with new files and/or description: the version goes up by one."""
    record = store.manifest.stream
    if record is None:
        raise AwsError(
            "this manifest records no stream",
            service="iot",
            operation="update_stream",
            hint="create one with `provisioner stream create` or `provisioner up`",
        )
    params: dict[str, Any] = {"streamId": record.stream_id}
    if files is not None:
        check_stream_files(files)
        params["files"] = files_param(files)
        params["roleArn"] = record.role_arn
    full_description = record.description
    if description is not None:
        full_description = stream_description(description, store.manifest.run_id)
        params["description"] = full_description
    answer = api.write(api.iot.update_stream, dry_result={"streamVersion": record.version + 1}, **params)
    new_version = int(answer.get("streamVersion", record.version + 1))
    store.change(
        stream=replace(
            record,
            version=new_version,
            description=full_description,
            files=_records(files) if files is not None else record.files,
        )
    )
    return VersionChange(stream_id=record.stream_id, old_version=record.version, new_version=new_version)


def describe_stream(api: Api, stream_id: str) -> dict[str, Any]:
    check_stream_id(stream_id)
    info: dict[str, Any] = api.read(api.iot.describe_stream, streamId=stream_id)["streamInfo"]
    return info


def list_streams(api: Api) -> Iterator[dict[str, Any]]:
    return api.paginate(api.iot.list_streams, items="streams", maxResults=250)


def delete_stream(api: Api, stream_id: str) -> None:
    check_stream_id(stream_id)
    api.write(api.iot.delete_stream, streamId=stream_id)
