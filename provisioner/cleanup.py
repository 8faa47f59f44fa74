"""Cleanup: remove everything a run created, in dependency order, idempotently, with a report.

Order: OTA updates (cancel the job, then delete the update with its job); the stream; per thing: detach the
device policy from each certificate, detach the certificate from the thing, set it INACTIVE, delete it, delete
the thing (and its local key/cert files); the code-signing pair the run issued; the device policy; the role's
inline policy and the role (only when the run created it); every object version under the run's key prefix; the
bucket (only when the run created it). "Not found" counts as already gone, so running cleanup twice is safe.
Anything that cannot be removed is reported with the reason, and cleanup carries on with the rest. Local files are
deleted only when they are files the run wrote: the exact names, directly in the run's certificates directory
(resolved; no ``..``, no symlinks out); anything else a manifest names is kept and reported as refused.

``find_run`` rebuilds a manifest from the account for ``cleanup --run-id``: streams whose description carries
``[iot-stream-sim:run-id=<id>]``, things with the attribute ``iot-stream-sim:run-id=<id>`` and their certificates,
the policy ``iot-stream-sim-device-<id>``, the role ``iot-stream-sim-stream-<id>`` (when tagged with the run id),
objects under ``<key prefix>/<id>/`` in the stream's buckets (or ``--bucket``), and OTA updates whose description
carries the same marker (``ota create`` writes it; ``list_ota_updates``, then ``get_ota_update`` for each, since the
list holds no description). An endpoint without ``list_ota_updates`` (moto in-process) gives a warning, not a stop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aws import Api
from .certs import AMAZON_ROOT_CA1_NAME, LOCAL_ROOT_CA_NAME, device_paths
from .errors import AccessDenied, NotFound, ProvisionerError, Unsupported
from .manifest import (
    RUN_ID_KEY,
    RUN_ID_MARKER,
    BucketRecord,
    Manifest,
    OtaUpdateRecord,
    PolicyRecord,
    RoleRecord,
    StreamFileRecord,
    StreamRecord,
    ThingRecord,
)
from .ota import CODE_SIGNING_CERT_NAME, CODE_SIGNING_KEY_NAME
from .ota import cleanup_steps as ota_cleanup_steps
from .policy import policy_name
from .role import INLINE_POLICY_NAME, role_name

log = logging.getLogger(__name__)

CODE_SIGNING_NAMES = {CODE_SIGNING_CERT_NAME, CODE_SIGNING_KEY_NAME}


@dataclass(frozen=True, kw_only=True, slots=True)
class CleanupReport:
    removed: tuple[str, ...]
    already_gone: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    dry_run: bool = False
    #: Local files the manifest names but cleanup did not write (outside the certificates directory, a symlink,
    #: ``..``, another name): kept, with the reason. Not a failure: they were never the run's to remove.
    refused: tuple[tuple[str, str], ...] = ()
    #: What cleanup could not look for (``--run-id`` on an endpoint without ``list_ota_updates``). Not a failure.
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(kw_only=True, slots=True)
class Tally:
    """What a cleanup removed, found gone already, or failed to remove."""

    removed: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    def step(self, label: str, action: Callable[[], object]) -> bool:
        """Run one removal; True when the resource is gone afterwards (removed now or before)."""
        try:
            action()
        except NotFound:
            self.gone.append(label)
            return True
        except ProvisionerError as e:
            log.warning("could not remove %s: %s", label, e)
            self.failed.append((label, str(e)))
            return False
        self.removed.append(label)
        return True

    def report(self, dry_run: bool) -> CleanupReport:
        return CleanupReport(
            removed=tuple(self.removed),
            already_gone=tuple(self.gone),
            failed=tuple(self.failed),
            dry_run=dry_run,
            refused=tuple(self.refused),
        )


def cleanup_manifest(api: Api, manifest: Manifest, *, delete_local_files: bool = True) -> CleanupReport:
    """Remove every resource ``manifest`` records (see the module docstring for the order)."""
    tally = Tally()
    for ota in manifest.ota_updates:  # OTA updates and their jobs first: they name the stream and the things
        for label, action in ota_cleanup_steps(api, ota):
            tally.step(label, action)
    if manifest.stream is not None:
        stream_id = manifest.stream.stream_id
        tally.step(f"stream {stream_id}", lambda: api.write(api.iot.delete_stream, streamId=stream_id))
    policy = manifest.policy.name if manifest.policy is not None else policy_name(manifest.run_id)
    for thing in manifest.things:
        remove_thing(api, tally, thing, policy, delete_local_files=delete_local_files, certs_dir=manifest.certs_dir)
    if delete_local_files:
        for ota in manifest.ota_updates:
            if ota.signing_key is not None:  # a pair the provisioner issued (never the user's own)
                for path in (ota.signing_cert, ota.signing_key):
                    if path is not None and path.exists():
                        _remove_own_file(api, tally, path, manifest.certs_dir, CODE_SIGNING_NAMES)
    if manifest.policy is not None and manifest.policy.created:
        tally.step(f"policy {policy}", lambda: api.write(api.iot.delete_policy, policyName=policy))
    if manifest.role is not None and manifest.role.created:
        name = manifest.role.name
        tally.step(
            f"role {name} inline policy {INLINE_POLICY_NAME}",
            lambda: api.write(api.iam.delete_role_policy, RoleName=name, PolicyName=INLINE_POLICY_NAME),
        )
        tally.step(f"role {name}", lambda: api.write(api.iam.delete_role, RoleName=name))
    if manifest.bucket is not None:
        _remove_objects(api, tally, manifest.bucket)
    if delete_local_files and manifest.mqtt is not None and manifest.mqtt.ca_path is not None:
        ca_path = manifest.mqtt.ca_path
        if manifest.certs_dir is not None and ca_path.parent == manifest.certs_dir:
            _remove_own_file(api, tally, ca_path, manifest.certs_dir, {AMAZON_ROOT_CA1_NAME, LOCAL_ROOT_CA_NAME})
    if delete_local_files and manifest.certs_dir is not None and not api.dry_run:
        with contextlib.suppress(OSError):  # only when empty: never removes a file we did not write
            manifest.certs_dir.rmdir()
    return tally.report(api.dry_run)


def remove_thing(
    api: Api,
    tally: Tally,
    thing: ThingRecord,
    policy: str | None,
    *,
    delete_local_files: bool = True,
    certs_dir: Path | None = None,
) -> None:
    """Detach, deactivate and delete the thing's certificates (recorded and attached ones), then the thing."""
    name = thing.name
    arns = [thing.certificate_arn] if thing.certificate_arn else []
    try:
        attached = api.paginate(api.iot.list_thing_principals, items="principals", thingName=name)
        arns += [a for a in attached if a not in arns and ":cert/" in a]
    except NotFound:
        pass
    except ProvisionerError as e:
        tally.failed.append((f"thing {name} principals", str(e)))
    for arn in arns:
        remove_certificate(api, tally, thing_name=name, certificate_arn=arn, policy=policy)
    tally.step(f"thing {name}", lambda: api.write(api.iot.delete_thing, thingName=name))
    if delete_local_files:
        names = {p.name for p in device_paths(Path("."), name)}
        for path in (thing.cert_path, thing.key_path):
            if path is not None:
                _remove_own_file(api, tally, path, certs_dir, names)


def remove_certificate(
    api: Api, tally: Tally, *, thing_name: str | None, certificate_arn: str, policy: str | None
) -> None:
    cert_id = certificate_arn.rsplit("/", 1)[-1]
    label = f"certificate {cert_id[:12]}"
    if policy:
        tally.step(
            f"{label} policy {policy} attachment",
            lambda: api.write(api.iot.detach_policy, policyName=policy, target=certificate_arn),
        )
    if thing_name:
        tally.step(
            f"{label} attachment to {thing_name}",
            lambda: api.write(api.iot.detach_thing_principal, thingName=thing_name, principal=certificate_arn),
        )
    deactivated = tally.step(
        f"{label} deactivation",
        lambda: api.write(api.iot.update_certificate, certificateId=cert_id, newStatus="INACTIVE"),
    )
    if not deactivated:
        return  # an ACTIVE certificate cannot be deleted; the failure is reported
    tally.step(label, lambda: api.write(api.iot.delete_certificate, certificateId=cert_id))


def _remove_objects(api: Api, tally: Tally, bucket: BucketRecord) -> None:
    name, prefix = bucket.name, bucket.object_prefix
    try:
        versions = list(_object_versions(api, name, prefix))
    except NotFound:
        tally.gone.append(f"bucket {name}")
        return
    except ProvisionerError as e:
        tally.failed.append((f"objects s3://{name}/{prefix}", str(e)))
        return
    for key, version_id in versions:
        tally.step(f"s3://{name}/{key} version {version_id}", _deleter(api, name, key, version_id))
    _abort_uploads(api, tally, name, prefix)
    if bucket.created:
        ok = tally.step(f"bucket {name}", lambda: api.write(api.s3.delete_bucket, Bucket=name))
        if not ok:
            tally.failed[-1] = (tally.failed[-1][0], tally.failed[-1][1] + " (objects of others left in it?)")


def _abort_uploads(api: Api, tally: Tally, bucket: str, prefix: str) -> None:
    """Abort multipart uploads under the run's prefix that a killed run (kill -9) left unfinished."""
    try:
        page = api.read(api.s3.list_multipart_uploads, Bucket=bucket, Prefix=prefix)
    except ProvisionerError as e:
        log.warning("cannot list unfinished uploads in s3://%s/%s: %s", bucket, prefix, e)
        return
    for upload in page.get("Uploads", []):
        key, upload_id = str(upload["Key"]), str(upload["UploadId"])
        if key.startswith(prefix):
            tally.step(f"unfinished upload s3://{bucket}/{key}", _aborter(api, bucket, key, upload_id))


def _aborter(api: Api, bucket: str, key: str, upload_id: str) -> Callable[[], object]:
    return lambda: api.write(api.s3.abort_multipart_upload, Bucket=bucket, Key=key, UploadId=upload_id)


def _deleter(api: Api, bucket: str, key: str, version_id: str) -> Callable[[], object]:
    return lambda: api.write(api.s3.delete_object, Bucket=bucket, Key=key, VersionId=version_id)


def _object_versions(api: Api, bucket: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(key, version id) of every version and delete marker under ``prefix`` (``null`` for unversioned)."""
    if not prefix:
        raise ProvisionerError("refusing to delete objects with an empty key prefix")
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = api.read(api.s3.list_object_versions, **params)
        for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            if str(entry["Key"]).startswith(prefix):
                yield str(entry["Key"]), str(entry.get("VersionId") or "null")
        if not page.get("IsTruncated"):
            return
        params = {**params, "KeyMarker": page.get("NextKeyMarker"), "VersionIdMarker": page.get("NextVersionIdMarker")}


def refusal(path: Path, certs_dir: Path | None, names: set[str]) -> str | None:
    """Why cleanup must not delete ``path`` (None: it is a file the run wrote, directly in its certificates dir).

    The manifest is only a file: an edited ``key_path`` must not make cleanup delete something else. Allowed are
    exactly the names the provisioner writes, directly inside the run's certificates directory, after resolving
    symlinks, with no ``..`` in the recorded path, and not a symlink itself.
    """
    if certs_dir is None:
        return "the manifest records no certificates directory"
    if ".." in path.parts or ".." in certs_dir.parts:
        return "the recorded path contains '..'"
    if path.name not in names:
        return f"not a file the provisioner writes (expected one of {', '.join(sorted(names))})"
    if path.is_symlink():
        return "it is a symbolic link"
    real_dir = certs_dir.resolve()
    if path.parent.resolve() != real_dir or path.resolve().parent != real_dir:
        return f"outside the run's certificates directory {certs_dir}"
    return None


def _remove_own_file(api: Api, tally: Tally, path: Path, certs_dir: Path | None, names: set[str]) -> None:
    why = refusal(path, certs_dir, names)
    if why is not None:
        log.warning("not removing %s: %s", path, why)
        tally.refused.append((f"file {path}", why))
        return
    _remove_file(api, tally, path)


def _remove_file(api: Api, tally: Tally, path: Path) -> None:
    def remove() -> None:
        if api.dry_run:
            api.plan_local("delete_file", path=str(path))
            return
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"{path} is gone", service="local", operation="delete_file") from None
        except OSError as e:
            raise ProvisionerError(f"cannot delete {path}: {e.strerror}") from e

    tally.step(f"file {path}", remove)


# --- cleanup --run-id ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class FoundRun:
    """What ``find_run`` found, and what it could not search (each a line for the cleanup's output)."""

    manifest: Manifest
    warnings: tuple[str, ...] = ()


def find_run(api: Api, run_id: str, *, buckets: tuple[str, ...] = (), key_prefix: str = "iot-stream-sim") -> FoundRun:
    """A manifest of what the account holds for ``run_id`` (see the module docstring for how it is found)."""
    identity = api.identity()
    marker = RUN_ID_MARKER.format(run_id=run_id)
    stream: StreamRecord | None = None
    object_buckets: dict[str, str] = {}
    for summary in api.paginate(api.iot.list_streams, items="streams", maxResults=250):
        if marker not in str(summary.get("description", "")):
            continue
        info = api.read(api.iot.describe_stream, streamId=summary["streamId"])["streamInfo"]
        files = tuple(
            StreamFileRecord(
                file_id=int(f["fileId"]),
                bucket=f["s3Location"]["bucket"],
                key=f["s3Location"]["key"],
                version_id=f["s3Location"].get("version"),
            )
            for f in info.get("files", [])
        )
        stream = StreamRecord(
            stream_id=info["streamId"],
            stream_arn=info["streamArn"],
            version=int(info.get("streamVersion", 0)),
            description=str(info.get("description", "")),
            role_arn=str(info.get("roleArn", "")),
            files=files,
        )
        for f in files:
            head, sep, _ = f.key.partition(f"{run_id}/")
            if sep:
                object_buckets[f.bucket] = f"{head}{run_id}/"
    for bucket in buckets:
        object_buckets.setdefault(
            bucket, f"{key_prefix.strip('/')}/{run_id}/" if key_prefix.strip("/") else f"{run_id}/"
        )
    things = tuple(
        ThingRecord(name=str(t["thingName"]), arn=t.get("thingArn"))
        for t in api.paginate(
            api.iot.list_things, items="things", attributeName=RUN_ID_KEY, attributeValue=run_id, maxResults=250
        )
    )
    policy = None
    found_policy = api.maybe(api.iot.get_policy, policyName=policy_name(run_id))
    if found_policy is not None:
        policy = PolicyRecord(name=policy_name(run_id), arn=str(found_policy.get("policyArn", "")), created=True)
    role = None
    found_role = api.maybe(api.iam.get_role, RoleName=role_name(run_id))
    if found_role is not None and _tagged(found_role["Role"].get("Tags", []), run_id):
        role = RoleRecord(name=role_name(run_id), arn=str(found_role["Role"]["Arn"]), created=True)
    bucket_record = None
    if object_buckets:
        name, prefix = next(iter(object_buckets.items()))
        bucket_record = BucketRecord(name=name, created=_bucket_created_by(api, name, run_id), object_prefix=prefix)
    warnings: tuple[str, ...] = ()
    try:
        ota_updates = _find_ota_updates(api, marker)
    except Unsupported as e:
        ota_updates = ()
        warnings = (
            f"OTA updates not searched: {e.message}; if the run made any, remove them (and their jobs "
            "AFR_OTA-<id>) by hand or with `cleanup --manifest`",
        )
    manifest = Manifest(
        run_id=run_id,
        region=api.region,
        account_id=identity.account_id,
        partition=identity.partition,
        created_at="",
        aws_endpoint_url=api.clients.endpoint_url,
        bucket=bucket_record,
        role=role,
        stream=stream,
        policy=policy,
        things=things,
        ota_updates=ota_updates,
    )
    return FoundRun(manifest=manifest, warnings=warnings)


def _find_ota_updates(api: Api, marker: str) -> tuple[OtaUpdateRecord, ...]:
    """OTA updates whose description carries ``marker`` (``ota create`` writes it); their job, stream and targets."""
    found = []
    for summary in api.paginate(api.iot.list_ota_updates, items="otaUpdates", maxResults=250):
        answer = api.maybe(api.iot.get_ota_update, otaUpdateId=summary["otaUpdateId"])
        info = answer["otaUpdateInfo"] if answer is not None else {}
        if marker not in str(info.get("description") or ""):
            continue  # another run's, someone else's, or deleted since it was listed
        ota_update_id = str(info["otaUpdateId"])
        streams = [f.get("fileLocation", {}).get("stream", {}).get("streamId") for f in info.get("otaUpdateFiles", [])]
        found.append(
            OtaUpdateRecord(
                ota_update_id=ota_update_id,
                ota_update_arn=str(info.get("otaUpdateArn", "")),
                job_id=str(info.get("awsIotJobId") or f"AFR_OTA-{ota_update_id}"),
                job_arn=str(info.get("awsIotJobArn", "")),
                stream_id=next((str(s) for s in streams if s), ""),
                targets=tuple(str(t).rsplit("/", 1)[-1] for t in info.get("targets", [])),
            )
        )
    return tuple(found)


def _tagged(tags: list[dict[str, str]], run_id: str) -> bool:
    return any(t.get("Key") == RUN_ID_KEY and t.get("Value") == run_id for t in tags)


def _bucket_created_by(api: Api, bucket: str, run_id: str) -> bool:
    try:
        answer = api.maybe(api.s3.get_bucket_tagging, Bucket=bucket)
    except AccessDenied:
        return False
    except ProvisionerError as e:  # NoSuchTagSet: an untagged bucket was not created by a run
        log.debug("bucket %s has no tags: %s", bucket, e)
        return False
    return answer is not None and _tagged(answer.get("TagSet", []), run_id)
