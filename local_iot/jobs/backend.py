"""``JobsBackend``: one account's and region's Jobs and OTA updates, shared by the control plane and the MQTT side.

How this works: ``jobs_backends`` is a moto ``BackendDict`` keyed by account and region like moto's own (moto's
reset clears it; ``local_iot.persistence`` pickles it with the rest of the control plane). Each backend holds a
``JobsCore`` behind one lock; every call runs the core under that lock and hands the notifications it returns
to the *sink* the MQTT adapter registered (none while no adapter runs: the notifications are then dropped, as
AWS drops them for a device that is not connected). ``on_change`` hooks (the MQTT adapter's timer, the state
saver) run after every change.

Thing and thing-group targets are resolved from moto's IoT backend (read only); OTA updates read the stream
(``streams_backends``) and the size of its S3 objects (``moto_access``), and create the stream when given S3
locations, as ``CreateOTAUpdate`` does on AWS.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from moto.core.base_backend import BackendDict, BaseBackend
from moto.iot.models import iot_backends

from local_iot import moto_access
from local_iot.streams_backend import StreamApiError, streams_backends

from .core import JobsCore, JobsOutgoing, Target
from .model import ApiError, JobsApiError

__all__ = ["JobsBackend", "OtaUpdate", "Sink", "Wiring", "jobs_backends", "unwire", "wire"]

log = logging.getLogger(__name__)

Sink = Callable[[list[JobsOutgoing]], None]
R = TypeVar("R")
_ARN = re.compile(r"arn:[a-z-]+:iot:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):(?P<kind>thing|thinggroup)/(?P<name>.+)")
_OTA_ID = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_S3_URL = (
    re.compile(r"https://s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com(?:\.cn)?/(?P<bucket>[^/]+)/(?P<key>.+)"),
    re.compile(r"https://(?P<bucket>[^/]+)\.s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com(?:\.cn)?/(?P<key>.+)"),
)
OTA_JOB_PREFIX = "AFR_OTA-"
#: Topics whose publication means the device's request changed state (to be saved, timers to be re-armed).
_CHANGED = ("/notify", "/notify-next", "/update/accepted", "/start-next/accepted")


@dataclass(frozen=True, kw_only=True, slots=True)
class Wiring:
    """Where a region's notifications go (the MQTT adapter), who to tell after a change, the length of a minute."""

    sink: Sink
    on_change: Callable[[], None]
    minute: float = 60.0


#: (account, region) -> the running MQTT adapter's wiring. Kept outside the backends: they are pickled and reset.
_WIRING: dict[tuple[str, str], Wiring] = {}


def wire(account_id: str, region: str, wiring: Wiring) -> None:
    """Register where the backend of ``account_id``/``region`` sends its notifications (the latest adapter wins:
    moto's state is per process, so two emulators in one process share one backend)."""
    _WIRING[(account_id, region)] = wiring


def unwire(account_id: str, region: str, wiring: Wiring) -> None:
    """Remove ``wiring`` if it is still the registered one (a later adapter's stays)."""
    if _WIRING.get((account_id, region)) is wiring:
        del _WIRING[(account_id, region)]


@dataclass(slots=True, kw_only=True)
class OtaUpdate:
    ota_update_id: str
    arn: str
    created_at: float
    last_modified: float
    request: dict[str, Any]  # the CreateOTAUpdate body as given (files, targets, rollout...)
    status: str
    job_id: str
    job_arn: str
    stream_id: str
    created_stream: bool
    error: dict[str, str] | None = None
    sequence: int = 0
    tags: list[dict[str, str]] = field(default_factory=list)


def _invalid(message: str) -> JobsApiError:
    return JobsApiError(ApiError.INVALID_REQUEST, message)


class JobsBackend(BaseBackend):
    """Jobs, job executions and OTA updates of one account and region."""

    def __init__(self, region_name: str, account_id: str) -> None:
        super().__init__(region_name, account_id)
        self.core = JobsCore(account_id=account_id, region=region_name, partition=moto_access.partition(region_name))
        self.ota_updates: dict[str, OtaUpdate] = {}
        self._ota_sequence = 0
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:  # pickled by local_iot.persistence (the lock is not)
        with self._lock:
            state = self.__dict__.copy()
            state["core"] = copy.deepcopy(self.core)  # taken under the lock: never half a change
            state["ota_updates"] = copy.deepcopy(self.ota_updates)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- wiring -----------------------------------------------------------------------------------------------

    def _wiring(self) -> Wiring | None:
        wiring = _WIRING.get((self.account_id, self.region_name))
        if wiring is not None:
            self.core.minute = wiring.minute
        return wiring

    def run(self, operation: Callable[[JobsCore], tuple[R, list[JobsOutgoing]]]) -> R:
        """Run a changing operation on the core under the lock; publish its notifications; tell the hooks."""
        with self._lock:
            wiring = self._wiring()
            result, out = operation(self.core)
            if out and wiring is not None:
                wiring.sink(out)
        if wiring is not None:
            wiring.on_change()
        return result

    def read(self, operation: Callable[[JobsCore], R]) -> R:
        with self._lock:
            self._wiring()
            return operation(self.core)

    def handle(self, topic: str, payload: bytes, now: float) -> list[JobsOutgoing]:
        """A device's publish; returns the messages to publish (the caller publishes them, in order)."""
        with self._lock:
            wiring = self._wiring()
            out = self.core.handle(topic, payload, now)
        if wiring is not None and any(m.topic.endswith(_CHANGED) for m in out):
            wiring.on_change()
        return out

    def tick(self, now: float) -> None:
        self.run(lambda core: (None, core.tick(now)))

    # -- targets ------------------------------------------------------------------------------------------------

    def resolve_targets(self, targets: Any) -> list[Target]:
        """Things for thing and thing-group ARNs of this account and region (moto's IoT backend)."""
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise _invalid("targets must be a non-empty list of thing or thing-group ARNs")
        iot = iot_backends[self.account_id][self.region_name]
        things = {t.thing_name: t for t in list(iot.things.values())}
        groups = {g.thing_group_name: g for g in list(iot.thing_groups.values())}
        resolved: list[Target] = []
        for arn in targets:
            match = _ARN.fullmatch(arn)
            if match is None or match["region"] != self.region_name or match["account"] != self.account_id:
                raise _invalid(f"target {arn!r} is not a thing or thing-group ARN of this account and region")
            name = match["name"]
            if match["kind"] == "thing":
                thing = things.get(name)
                if thing is None:
                    raise JobsApiError(ApiError.RESOURCE_NOT_FOUND, f"Thing {name} does not exist")
                resolved.append(Target(thing_name=name, thing_arn=thing.arn))
            else:
                group = groups.get(name)
                if group is None:
                    raise JobsApiError(ApiError.RESOURCE_NOT_FOUND, f"Thing group {name} does not exist")
                resolved += [Target(thing_name=t.thing_name, thing_arn=t.arn) for t in list(group.things.values())]
        return resolved

    def thing_exists(self, thing_name: str) -> bool:
        iot = iot_backends[self.account_id][self.region_name]
        return any(t.thing_name == thing_name for t in list(iot.things.values()))

    def read_document_source(self, source: str) -> str:
        for pattern in _S3_URL:
            match = pattern.fullmatch(source)
            if match:
                bucket, key = match["bucket"], urllib.parse.unquote(match["key"])
                break
        else:
            raise _invalid(f"documentSource {source!r} is not an S3 URL (https://s3.amazonaws.com/<bucket>/<key>)")
        try:
            data, _ = moto_access.object_bytes(self.account_id, self.region_name, bucket, key, None)
        except moto_access.ObjectMissing as exc:
            raise _invalid(f"documentSource {source}: {exc}") from exc
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid(f"documentSource {source} is not UTF-8 text") from exc

    # -- OTA updates --------------------------------------------------------------------------------------------

    def ota_arn(self, ota_update_id: str) -> str:
        return f"arn:{self.partition}:iot:{self.region_name}:{self.account_id}:otaupdate/{ota_update_id}"

    def create_ota_update(self, ota_update_id: str, body: dict[str, Any], now: float) -> OtaUpdate:
        if not _OTA_ID.fullmatch(ota_update_id):
            raise _invalid(f"otaUpdateId {ota_update_id!r} must be 1-128 characters of [a-zA-Z0-9_-]")
        with self._lock:
            if ota_update_id in self.ota_updates:
                raise JobsApiError(ApiError.RESOURCE_ALREADY_EXISTS, f"OTA update {ota_update_id} already exists")
        protocols = body.get("protocols", ["MQTT"])
        if protocols != ["MQTT"]:
            raise _invalid('local_iot serves OTA updates over MQTT only: protocols must be ["MQTT"]')
        if not isinstance(body.get("roleArn"), str) or len(body["roleArn"]) < 20:
            raise _invalid("roleArn is required: a role that AWS IoT can assume to read the files and create jobs")
        targets = self.resolve_targets(body.get("targets"))
        files = body.get("files")
        if not isinstance(files, list) or not files:
            raise _invalid("files must list at least one file")
        stream_id, created, entries = self._ota_stream(ota_update_id, files, body["roleArn"])
        document = json.dumps({"afr_ota": {"protocols": protocols, "streamname": stream_id, "files": entries}})
        rollout = body.get("awsJobExecutionsRolloutConfig") or {}
        timeout = body.get("awsJobTimeoutConfig") or {}
        job_id = OTA_JOB_PREFIX + ota_update_id
        try:
            job = self.run(
                lambda core: core.create_job(
                    job_id,
                    targets=list(body["targets"]),
                    resolved=targets,
                    document=document,
                    now=now,
                    description=body.get("description"),
                    target_selection=body.get("targetSelection", "SNAPSHOT"),
                    max_per_minute=rollout.get("maximumPerMinute"),
                    in_progress_timeout_minutes=timeout.get("inProgressTimeoutInMinutes"),
                )
            )
        except JobsApiError:
            if created:
                streams_backends[self.account_id][self.region_name].delete_stream(stream_id)
            raise
        with self._lock:
            self._ota_sequence += 1
            update = OtaUpdate(
                ota_update_id=ota_update_id,
                arn=self.ota_arn(ota_update_id),
                created_at=now,
                last_modified=now,
                request=json.loads(json.dumps(body)),
                status="CREATE_COMPLETE",
                job_id=job.job_id,
                job_arn=job.job_arn,
                stream_id=stream_id,
                created_stream=created,
                sequence=self._ota_sequence,
                tags=list(body.get("tags") or []),
            )
            self.ota_updates[ota_update_id] = update
        wiring = self._wiring()
        if wiring is not None:
            wiring.on_change()
        log.info("OTA update %s: job %s on %d things, stream %s", ota_update_id, job_id, len(targets), stream_id)
        return update

    def get_ota_update(self, ota_update_id: str) -> OtaUpdate:
        with self._lock:
            update = self.ota_updates.get(ota_update_id)
        if update is None:
            raise JobsApiError(ApiError.RESOURCE_NOT_FOUND, f"OTA update {ota_update_id} does not exist")
        return update

    def delete_ota_update(self, ota_update_id: str, *, delete_stream: bool, force_delete_job: bool) -> None:
        update = self.get_ota_update(ota_update_id)
        now = time.time()
        with self._lock:
            job = self.core.jobs.get(update.job_id)
            if job is not None:
                if job.status.value == "IN_PROGRESS" and not force_delete_job:
                    raise _invalid(
                        f"the job {update.job_id} of OTA update {ota_update_id} is IN_PROGRESS: cancel it first, or "
                        "delete with forceDeleteAWSJob=true"
                    )
                self.run(lambda core: (None, core.delete_job(update.job_id, force=True, now=now)))
            del self.ota_updates[ota_update_id]
        if delete_stream:
            try:
                streams_backends[self.account_id][self.region_name].delete_stream(update.stream_id)
            except StreamApiError:
                log.info("OTA update %s: stream %s was already gone", ota_update_id, update.stream_id)

    def list_ota_updates(self, status: str | None) -> list[OtaUpdate]:
        with self._lock:
            updates = sorted(self.ota_updates.values(), key=lambda u: -u.sequence)
        return [u for u in updates if status is None or u.status == status]

    def _ota_stream(
        self, ota_update_id: str, files: list[Any], role_arn: str
    ) -> tuple[str, bool, list[dict[str, Any]]]:
        """The stream the job names (given, or created from S3 locations) and the job document's file entries."""
        streams = streams_backends[self.account_id][self.region_name]
        given = {f.get("fileLocation", {}).get("stream", {}).get("streamId") for f in files if isinstance(f, dict)}
        s3_files = [f for f in files if isinstance(f, dict) and "s3Location" in f.get("fileLocation", {})]
        created = False
        if s3_files and len(s3_files) != len(files):
            raise _invalid("give every file as a stream file or every file as an S3 location, not both")
        if s3_files:
            stream_id = f"{OTA_JOB_PREFIX}{uuid.uuid4()}"
            entries = [{"fileId": i, "s3Location": f["fileLocation"]["s3Location"]} for i, f in enumerate(s3_files)]
            try:
                streams.create_stream(stream_id, files=entries, role_arn=role_arn, description=ota_update_id)
            except StreamApiError as exc:
                raise _invalid(f"cannot create the OTA update's stream: {exc.message}") from exc
            created = True
        else:
            given.discard(None)
            if len(given) != 1:
                raise _invalid("every file needs fileLocation.stream with one and the same streamId")
            stream_id = str(given.pop())
        try:
            record = streams.describe_stream(stream_id).record
        except StreamApiError as exc:
            raise JobsApiError(ApiError.RESOURCE_NOT_FOUND, f"Stream {stream_id} does not exist") from exc
        entries_out: list[dict[str, Any]] = []
        for index, f in enumerate(files):
            file_id = index if created else f["fileLocation"]["stream"].get("fileId", 0)
            stream_file = record.file(file_id)
            if stream_file is None:
                raise _invalid(f"stream {stream_id} has no file {file_id}")
            try:
                data, _ = moto_access.object_bytes(
                    self.account_id, self.region_name, stream_file.bucket, stream_file.key, stream_file.version_id
                )
            except moto_access.ObjectMissing as exc:
                raise _invalid(f"file {file_id} of stream {stream_id}: {exc}") from exc
            name = f.get("fileName")
            if not isinstance(name, str) or not name:
                raise _invalid("each file needs a fileName (the path the device writes it to)")
            entry: dict[str, Any] = {"filepath": name, "filesize": len(data), "fileid": file_id}
            if "fileType" in f:
                entry["fileType"] = f["fileType"]
            entry.update(_signing(f.get("codeSigning")))
            entries_out.append(entry)
        return stream_id, created, entries_out


def _signing(code_signing: Any) -> dict[str, Any]:
    """The job document's ``certfile`` and ``sig-<hash>-<algorithm>`` from ``customCodeSigning``."""
    if code_signing is None:
        return {}
    if not isinstance(code_signing, dict):
        raise _invalid("codeSigning must be an object")
    if "awsSignerJobId" in code_signing or "startSigningJobParameter" in code_signing:
        raise _invalid("local_iot does not emulate AWS Signer: sign the file yourself and use customCodeSigning")
    custom = code_signing.get("customCodeSigning")
    if not isinstance(custom, dict):
        raise _invalid("codeSigning needs customCodeSigning")
    signature = (custom.get("signature") or {}).get("inlineDocument")
    try:
        raw = base64.b64decode(signature or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid("customCodeSigning.signature.inlineDocument is not base64") from exc
    if not raw:
        raise _invalid("customCodeSigning.signature.inlineDocument is required")
    hash_algorithm = custom.get("hashAlgorithm")
    signature_algorithm = custom.get("signatureAlgorithm")
    if not isinstance(hash_algorithm, str) or not isinstance(signature_algorithm, str):
        raise _invalid("customCodeSigning needs hashAlgorithm and signatureAlgorithm")
    entry: dict[str, Any] = {}
    certificate = (custom.get("certificateChain") or {}).get("certificateName")
    if isinstance(certificate, str) and certificate:
        entry["certfile"] = certificate
    entry[f"sig-{hash_algorithm.lower()}-{signature_algorithm.lower()}"] = base64.b64encode(raw).decode()
    return entry


jobs_backends: BackendDict[JobsBackend] = BackendDict(JobsBackend, "iot")
