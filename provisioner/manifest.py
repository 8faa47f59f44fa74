"""The manifest: one JSON file recording everything a run created, read by ``device-sim`` and by cleanup.

How this works: ``Manifest`` and its parts are frozen dataclasses; a change makes a new value with
``dataclasses.replace``. ``ManifestStore`` holds the current value and writes it atomically (temp file + rename)
after every step, so an interrupted run is recorded up to its last completed call and cleanup can remove it.
Paths are stored relative to the manifest's directory when they lie below it (absolute otherwise) and
``load_manifest`` returns them absolute. The format is documented in docs/provisioner.md.

Typical use from device-sim::

    from provisioner.manifest import load_manifest
    m = load_manifest("run.json")
    thing = m.thing("sim-0")          # ThingRecord: cert_path, key_path (absolute)
    m.mqtt.host, m.mqtt.port, m.mqtt.ca_path, m.stream.stream_id, m.firmware[0].sha256
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from device_sim.fileio import atomic_write

from .errors import ManifestError, OutputError

SCHEMA_VERSION = 1
#: Tag key (streams, roles, policies, buckets) and thing attribute name that carry the run id.
RUN_ID_KEY = "iot-stream-sim:run-id"
#: Marker appended to stream descriptions so that ``cleanup --run-id`` finds streams without tag APIs.
RUN_ID_MARKER = "[iot-stream-sim:run-id={run_id}]"


def new_run_id(now: datetime.datetime | None = None) -> str:
    """``20250101T120000Z-3f2a1b``: sortable, unique enough, valid in every AWS name it is used in."""
    now = now or datetime.datetime.now(datetime.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class MqttEndpoint:
    host: str
    port: int
    #: The root CA that signs the broker's server certificate (AmazonRootCA1 on AWS).
    ca_path: Path | None = None
    #: A plain (non-TLS) MQTT port, when the endpoint offers one (only local brokers do).
    plain_port: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class BucketRecord:
    name: str
    created: bool
    #: Every object of the run lives under this key prefix (``<prefix>/<run id>/``); cleanup deletes all of it.
    object_prefix: str


@dataclass(frozen=True, kw_only=True, slots=True)
class FirmwareObject:
    """An uploaded S3 object. ``source``: ``file:<path>`` or ``generate:size=<n>,seed=<n>,index=<n>``."""

    file_id: int
    bucket: str
    key: str
    version_id: str | None
    size: int
    sha256: str
    etag: str
    source: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RoleRecord:
    name: str
    arn: str
    created: bool
    inline_policy_name: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamFileRecord:
    file_id: int
    bucket: str
    key: str
    version_id: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamRecord:
    stream_id: str
    stream_arn: str
    version: int
    description: str
    role_arn: str
    files: tuple[StreamFileRecord, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyRecord:
    name: str
    arn: str
    created: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ThingRecord:
    """A fleet member, recorded step by step: the thing, then its certificate and files, then the attachments."""

    name: str
    arn: str | None = None
    certificate_id: str | None = None
    certificate_arn: str | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    policy_attached: bool = False
    principal_attached: bool = False

    @property
    def complete(self) -> bool:
        return bool(self.certificate_arn and self.cert_path and self.key_path) and (
            self.policy_attached and self.principal_attached
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class OtaUpdateRecord:
    """An OTA update (``provisioner ota create``): its job, the things it targets, how the files were signed."""

    ota_update_id: str
    ota_update_arn: str
    job_id: str
    job_arn: str
    stream_id: str
    targets: tuple[str, ...]
    #: The code-signing certificate devices verify with, as a local file, and where the job document says it is.
    signing_cert: Path | None = None
    #: The code-signing key, only when the provisioner issued it (``code-signing.private.key``, 0600).
    signing_key: Path | None = None
    cert_path_on_device: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Manifest:
    run_id: str
    region: str
    account_id: str
    partition: str = "aws"
    created_at: str
    schema_version: int = SCHEMA_VERSION
    aws_endpoint_url: str | None = None
    mqtt: MqttEndpoint | None = None
    certs_dir: Path | None = None
    bucket: BucketRecord | None = None
    firmware: tuple[FirmwareObject, ...] = ()
    role: RoleRecord | None = None
    stream: StreamRecord | None = None
    policy: PolicyRecord | None = None
    things: tuple[ThingRecord, ...] = field(default=())
    ota_updates: tuple[OtaUpdateRecord, ...] = ()

    def thing(self, name: str) -> ThingRecord | None:
        return next((t for t in self.things if t.name == name), None)

    def with_thing(self, record: ThingRecord) -> Manifest:
        """A copy with ``record`` replacing the thing of the same name (or appended)."""
        things = [record if t.name == record.name else t for t in self.things]
        if self.thing(record.name) is None:
            things.append(record)
        return replace(self, things=tuple(things))

    def firmware_file(self, file_id: int) -> FirmwareObject | None:
        return next((f for f in self.firmware if f.file_id == file_id), None)


# --- JSON ---------------------------------------------------------------------------------------------------------


def _path_out(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(path.resolve().relative_to(base))
    except ValueError:
        return str(path.resolve())


def _path_in(text: Any, base: Path) -> Path | None:
    if text is None:
        return None
    path = Path(str(text))
    return path if path.is_absolute() else base / path


def manifest_to_json(manifest: Manifest, base: Path) -> dict[str, Any]:
    """The JSON object for ``manifest``; paths relative to ``base`` (the manifest's directory) where possible."""
    mqtt = manifest.mqtt
    stream = manifest.stream
    return {
        "schema_version": manifest.schema_version,
        "run_id": manifest.run_id,
        "created_at": manifest.created_at,
        "region": manifest.region,
        "account_id": manifest.account_id,
        "partition": manifest.partition,
        "aws_endpoint_url": manifest.aws_endpoint_url,
        "mqtt": None
        if mqtt is None
        else {
            "host": mqtt.host,
            "port": mqtt.port,
            "ca_path": _path_out(mqtt.ca_path, base),
            "plain_port": mqtt.plain_port,
        },
        "certs_dir": _path_out(manifest.certs_dir, base),
        "bucket": None
        if manifest.bucket is None
        else {
            "name": manifest.bucket.name,
            "created": manifest.bucket.created,
            "object_prefix": manifest.bucket.object_prefix,
        },
        "firmware": [
            {
                "file_id": f.file_id,
                "bucket": f.bucket,
                "key": f.key,
                "version_id": f.version_id,
                "size": f.size,
                "sha256": f.sha256,
                "etag": f.etag,
                "source": f.source,
            }
            for f in manifest.firmware
        ],
        "role": None
        if manifest.role is None
        else {
            "name": manifest.role.name,
            "arn": manifest.role.arn,
            "created": manifest.role.created,
            "inline_policy_name": manifest.role.inline_policy_name,
        },
        "stream": None
        if stream is None
        else {
            "stream_id": stream.stream_id,
            "stream_arn": stream.stream_arn,
            "version": stream.version,
            "description": stream.description,
            "role_arn": stream.role_arn,
            "files": [
                {"file_id": f.file_id, "bucket": f.bucket, "key": f.key, "version_id": f.version_id}
                for f in stream.files
            ],
        },
        "policy": None
        if manifest.policy is None
        else {"name": manifest.policy.name, "arn": manifest.policy.arn, "created": manifest.policy.created},
        "things": [_thing_to_json(t, base) for t in manifest.things],
        "ota_updates": [_ota_to_json(o, base) for o in manifest.ota_updates],
    }


def _ota_to_json(o: OtaUpdateRecord, base: Path) -> dict[str, Any]:
    return {
        "ota_update_id": o.ota_update_id,
        "ota_update_arn": o.ota_update_arn,
        "job_id": o.job_id,
        "job_arn": o.job_arn,
        "stream_id": o.stream_id,
        "targets": list(o.targets),
        "signing_cert": _path_out(o.signing_cert, base),
        "signing_key": _path_out(o.signing_key, base),
        "cert_path_on_device": o.cert_path_on_device,
    }


def _ota_from_fields(o: _Fields, base: Path) -> OtaUpdateRecord:
    targets = o.data.get("targets") or []
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise _Malformed(f"field {o.where}.targets", "is not a list of thing names")
    return OtaUpdateRecord(
        ota_update_id=o.text("ota_update_id"),
        ota_update_arn=o.text("ota_update_arn"),
        job_id=o.text("job_id"),
        job_arn=o.text("job_arn"),
        stream_id=o.text("stream_id"),
        targets=tuple(targets),
        signing_cert=_path_in(o.opt_text("signing_cert"), base),
        signing_key=_path_in(o.opt_text("signing_key"), base),
        cert_path_on_device=o.text("cert_path_on_device", ""),
    )


def _thing_to_json(t: ThingRecord, base: Path) -> dict[str, Any]:
    return {
        "name": t.name,
        "arn": t.arn,
        "certificate_id": t.certificate_id,
        "certificate_arn": t.certificate_arn,
        "cert_path": _path_out(t.cert_path, base),
        "key_path": _path_out(t.key_path, base),
        "policy_attached": t.policy_attached,
        "principal_attached": t.principal_attached,
    }


class _Malformed(Exception):
    """A missing or bad field at ``where`` (e.g. ``things[2].name``)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where} {problem}")
        self.where = where
        self.problem = problem


class _Fields:
    """Typed access to one JSON object of the manifest that names the field in every complaint."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise _Malformed(where or "the manifest", f"is {type(data).__name__}, not an object")
        self.data: dict[str, Any] = data
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def required(self, key: str) -> Any:
        if key not in self.data:
            raise _Malformed(f"field {self._name(key)!r}", "is missing")
        return self.data[key]

    def text(self, key: str, default: str | None = None) -> str:
        value = self.required(key) if default is None else self.data.get(key, default)
        if value is None and default is not None:
            return default
        if not isinstance(value, str | int | float):
            raise _Malformed(f"field {self._name(key)!r}", f"is {type(value).__name__}, not a string")
        return str(value)

    def opt_text(self, key: str) -> str | None:
        value = self.data.get(key)
        return None if value is None else self.text(key)

    def number(self, key: str) -> int:
        value = self.required(key)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _Malformed(f"field {self._name(key)!r}", f"is {value!r}, not an integer")
        try:
            return int(value)
        except ValueError:
            raise _Malformed(f"field {self._name(key)!r}", f"is {value!r}, not an integer") from None

    def opt_number(self, key: str) -> int | None:
        return None if self.data.get(key) is None else self.number(key)

    def flag(self, key: str, default: bool | None = None) -> bool:
        value = self.required(key) if default is None else self.data.get(key, default)
        if not isinstance(value, bool):
            raise _Malformed(f"field {self._name(key)!r}", f"is {value!r}, not true/false")
        return value

    def obj(self, key: str) -> _Fields | None:
        value = self.data.get(key)
        return None if value is None else _Fields(value, self._name(key))

    def objs(self, key: str) -> list[_Fields]:
        value = self.data.get(key) or []
        if not isinstance(value, list):
            raise _Malformed(f"field {self._name(key)!r}", f"is {type(value).__name__}, not a list")
        return [_Fields(item, f"{self._name(key)}[{i}]") for i, item in enumerate(value)]


def _thing_from_fields(t: _Fields, base: Path) -> ThingRecord:
    return ThingRecord(
        name=t.text("name"),
        arn=t.opt_text("arn"),
        certificate_id=t.opt_text("certificate_id"),
        certificate_arn=t.opt_text("certificate_arn"),
        cert_path=_path_in(t.opt_text("cert_path"), base),
        key_path=_path_in(t.opt_text("key_path"), base),
        policy_attached=t.flag("policy_attached", False),
        principal_attached=t.flag("principal_attached", False),
    )


def _thing_from_json(t: dict[str, Any], base: Path) -> ThingRecord:
    return _thing_from_fields(_Fields(t, "thing"), base)


def manifest_from_json(data: dict[str, Any], base: Path, *, name: str = "manifest") -> Manifest:
    """Parse the JSON object; raises ManifestError naming the missing or bad field (or another schema version)."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        if isinstance(data, dict) and "schema_version" not in data:
            raise ManifestError(
                f"{name} has no schema_version: it is not a provisioner manifest",
                hint="pass the file `provisioner up --manifest` wrote, or remove a run with "
                "`provisioner cleanup --run-id RUN_ID`",
            )
        raise ManifestError(
            f"{name} has schema version {version!r}, which is not supported",
            hint=f"this provisioner reads version {SCHEMA_VERSION}; use the matching iot-stream-sim release",
        )
    run_id = data.get("run_id")
    try:
        d = _Fields(data, "")
        mqtt = d.obj("mqtt")
        stream = d.obj("stream")
        role = d.obj("role")
        policy = d.obj("policy")
        bucket = d.obj("bucket")
        return Manifest(
            schema_version=SCHEMA_VERSION,
            run_id=d.text("run_id"),
            created_at=d.text("created_at"),
            region=d.text("region"),
            account_id=d.text("account_id"),
            partition=d.text("partition", "aws") or "aws",
            aws_endpoint_url=d.opt_text("aws_endpoint_url"),
            mqtt=None
            if mqtt is None
            else MqttEndpoint(
                host=mqtt.text("host"),
                port=mqtt.number("port"),
                ca_path=_path_in(mqtt.opt_text("ca_path"), base),
                plain_port=mqtt.opt_number("plain_port"),
            ),
            certs_dir=_path_in(d.opt_text("certs_dir"), base),
            bucket=None
            if bucket is None
            else BucketRecord(
                name=bucket.text("name"), created=bucket.flag("created"), object_prefix=bucket.text("object_prefix")
            ),
            firmware=tuple(
                FirmwareObject(
                    file_id=f.number("file_id"),
                    bucket=f.text("bucket"),
                    key=f.text("key"),
                    version_id=f.opt_text("version_id"),
                    size=f.number("size"),
                    sha256=f.text("sha256"),
                    etag=f.text("etag"),
                    source=f.text("source", ""),
                )
                for f in d.objs("firmware")
            ),
            role=None
            if role is None
            else RoleRecord(
                name=role.text("name"),
                arn=role.text("arn"),
                created=role.flag("created"),
                inline_policy_name=role.opt_text("inline_policy_name"),
            ),
            stream=None
            if stream is None
            else StreamRecord(
                stream_id=stream.text("stream_id"),
                stream_arn=stream.text("stream_arn"),
                version=stream.number("version"),
                description=stream.text("description", ""),
                role_arn=stream.text("role_arn"),
                files=tuple(
                    StreamFileRecord(
                        file_id=f.number("file_id"),
                        bucket=f.text("bucket"),
                        key=f.text("key"),
                        version_id=f.opt_text("version_id"),
                    )
                    for f in stream.objs("files")
                ),
            ),
            policy=None
            if policy is None
            else PolicyRecord(name=policy.text("name"), arn=policy.text("arn"), created=policy.flag("created")),
            things=tuple(_thing_from_fields(t, base) for t in d.objs("things")),
            ota_updates=tuple(_ota_from_fields(o, base) for o in d.objs("ota_updates")),
        )
    except _Malformed as e:
        if isinstance(run_id, str) and run_id:
            hint = f"restore the field, or remove the run without the manifest: `provisioner cleanup --run-id {run_id}`"
        else:
            hint = "this is not a provisioner manifest; remove a run without it: `provisioner cleanup --run-id RUN_ID`"
        raise ManifestError(f"{name} is malformed: {e}", hint=hint) from e


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest; its relative paths come back absolute (relative to the manifest's directory)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ManifestError(
            f"manifest {p} does not exist", hint="pass the file `provisioner up --manifest` wrote"
        ) from e
    except (OSError, ValueError) as e:
        raise ManifestError(f"cannot read manifest {p}: {e}") from e
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {p} is not a JSON object")
    base = p.resolve().parent
    return _replay_journal(manifest_from_json(data, base, name=f"manifest {p}"), journal_path(p), base)


def journal_path(path: str | os.PathLike[str]) -> Path:
    """``<manifest>.journal``: thing records appended since the manifest was last written whole."""
    p = Path(path)
    return p.with_name(p.name + ".journal")


def _replay_journal(manifest: Manifest, journal: Path, base: Path) -> Manifest:
    """Apply the thing records a run appended after its last full save (an interrupted run leaves them)."""
    try:
        lines = journal.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return manifest
    except OSError as e:
        raise ManifestError(f"cannot read the manifest journal {journal}: {e}") from e
    for number, line in enumerate(lines, 1):
        try:
            record = _thing_from_json(json.loads(line), base)
        except (ValueError, _Malformed) as e:
            if number == len(lines):  # the last line of a killed run may be half written: it recorded nothing new
                break
            raise ManifestError(f"manifest journal {journal} line {number} is malformed ({e})") from e
        manifest = manifest.with_thing(record)
    return manifest


def save_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> None:
    """Write atomically: a reader (or a crash) never sees half a manifest. OutputError when it cannot be written."""
    p = Path(path)
    text = json.dumps(manifest_to_json(manifest, p.resolve().parent), indent=2) + "\n"
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, text, mode=0o644)
    except OSError as e:
        raise _write_error(p, e) from e
    journal_path(p).unlink(missing_ok=True)  # everything it held is in the manifest now


def _write_error(path: Path, e: OSError) -> OutputError:
    return OutputError(
        f"cannot write the manifest {path}: {e.strerror or e}",
        hint="free space or fix the permissions, then run the same command again (it resumes)",
    )


class ManifestStore:
    """The manifest of the run in progress; every step is on disk before the next AWS call (not in dry-run mode).

    ``update`` writes the whole manifest. ``record_thing`` (called several times per thing of a fleet) appends the
    thing's record to ``<manifest>.journal`` and rewrites the whole manifest at most every ``full_save_every``
    seconds: writing 1000 things whole after every call cost ~30 ms each, 87 % of provisioning a 1000-thing fleet.
    ``load_manifest`` replays the journal, so an interrupted run loses nothing; ``flush`` writes it whole.
    A whole write grows with the fleet (10,000 things: most of the provisioner's time once they were written every
    second), so the next one waits ``full_save_spacing``: at least ``full_save_every``, and at least
    ``FULL_SAVE_SPACING`` times as long as the last whole write took. The journal keeps every step on disk meanwhile.
    """

    #: The next whole write waits at least this many times the duration of the last one (at most ~1/11 of the time).
    FULL_SAVE_SPACING = 10.0

    def __init__(
        self,
        manifest: Manifest,
        path: Path | None,
        *,
        dry_run: bool = False,
        full_save_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manifest = manifest
        self.path = path
        self.dry_run = dry_run
        self.full_save_every = full_save_every
        self._clock = clock
        self._journal_dirty = False
        self._last_full_save = clock()
        self._last_full_save_s = 0.0

    @property
    def full_save_spacing(self) -> float:
        """Seconds between two whole writes of the manifest while things are recorded."""
        return max(self.full_save_every, self.FULL_SAVE_SPACING * self._last_full_save_s)

    @property
    def _writes(self) -> bool:
        return self.path is not None and not self.dry_run

    def update(self, manifest: Manifest) -> Manifest:
        self.manifest = manifest
        if self._writes:
            assert self.path is not None
            started = self._clock()
            save_manifest(manifest, self.path)
            self._journal_dirty = False
            self._last_full_save = self._clock()
            self._last_full_save_s = self._last_full_save - started
        return manifest

    def record_thing(self, record: ThingRecord) -> Manifest:
        """Record one thing's new state: journal append now, the whole manifest now and then."""
        self.manifest = self.manifest.with_thing(record)
        if not self._writes:
            return self.manifest
        assert self.path is not None
        if self._clock() - self._last_full_save >= self.full_save_spacing:
            return self.update(self.manifest)
        line = json.dumps(_thing_to_json(record, self.path.resolve().parent)) + "\n"
        try:
            with open(journal_path(self.path), "a", encoding="utf-8") as journal:
                journal.write(line)
        except OSError as e:
            raise _write_error(journal_path(self.path), e) from e
        self._journal_dirty = True
        return self.manifest

    def flush(self) -> None:
        """Write the whole manifest if the journal holds anything (the end of a fleet step)."""
        if self._journal_dirty:
            self.update(self.manifest)

    def change(self, **changes: Any) -> Manifest:
        return self.update(replace(self.manifest, **changes))


__all__ = [
    "RUN_ID_KEY",
    "RUN_ID_MARKER",
    "SCHEMA_VERSION",
    "BucketRecord",
    "FirmwareObject",
    "Manifest",
    "ManifestStore",
    "MqttEndpoint",
    "OtaUpdateRecord",
    "PolicyRecord",
    "RoleRecord",
    "StreamFileRecord",
    "StreamRecord",
    "ThingRecord",
    "journal_path",
    "load_manifest",
    "new_run_id",
    "save_manifest",
]
