"""What a run needs, read once from a provisioner manifest: the one place in device_sim that reads a manifest.

How this works: ``provisioner up`` records the MQTT endpoint, the stream, the things and their certificate files in
a manifest (``provisioner.manifest`` owns that file format and its journal). ``read_target`` turns it into a
``FleetTarget`` (where every device connects, which stream) and the ``DeviceIdentity`` of each thing;
``device_from_manifest`` picks one thing for a single download. ``FleetPlan`` is a whole fleet run as plain data
(manifest path, selection, download and fleet settings, report directory): the command line builds it, the asyncio
runner and the Locust engine run it, and ``to_json``/``from_json`` carry it across processes and machines (a Locust
worker re-reads its own copy of the manifest, so certificate paths are that machine's). Every problem is a
``PlanError`` whose message says what to do; nothing here imports the command line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from device_sim.device.jobs import JobSettings
from device_sim.device.types import DownloadSettings, SinkKind
from device_sim.device.verify import S3Source
from device_sim.protocol.limits import DEFAULT_PRICE_PER_MILLION_MESSAGES_USD
from device_sim.transport import FlowControl, MqttProtocol, QoS
from provisioner.errors import ProvisionerError
from provisioner.manifest import Manifest, load_manifest

__all__ = [
    "DeviceIdentity",
    "FleetPlan",
    "FleetSettings",
    "FleetTarget",
    "PlanError",
    "Shard",
    "SingleDevice",
    "device_from_manifest",
    "read_target",
    "s3_source",
    "select_identities",
]


class PlanError(ValueError):
    """The manifest or the selection cannot make a run; the message says what to fix."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceIdentity:
    thing_name: str
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetTarget:
    """Where every device of the fleet connects, and which stream it downloads."""

    endpoint: str
    port: int
    stream_id: str
    ca: Path | None = None
    no_tls: bool = False
    aws_endpoint_url: str | None = None
    region: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetSettings:
    connect_rate: float = 100.0  # connects per second (AWS: 500/s per account)
    start_jitter: float = 0.0  # seconds of random extra delay per device
    deadline_s: float | None = None  # stop (and report) after this long
    seed: int = 0
    price_per_million: float = DEFAULT_PRICE_PER_MILLION_MESSAGES_USD
    transport: Mapping[str, Any] | None = None  # protocol, keepalive_s, flow_control, qos (TransportSettings)
    crt_threads: int | None = None  # awscrt event-loop threads; None: fleet_crt_threads()

    def __post_init__(self) -> None:
        if not 0 < self.connect_rate <= 100_000:
            raise ValueError(f"connect rate {self.connect_rate}/s must be > 0")
        if self.start_jitter < 0:
            raise ValueError("start jitter must be >= 0 seconds")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline must be > 0 seconds")
        if self.crt_threads is not None and not 1 <= self.crt_threads <= 64:
            raise ValueError(f"crt threads {self.crt_threads} must be 1..64")


@dataclass(frozen=True, kw_only=True, slots=True)
class Shard:
    """Part ``index`` (1-based) of ``count`` equal, contiguous parts of a manifest's things."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: give I/N with 1 <= I <= N, e.g. 1/4")

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        try:
            if not sep:
                raise ValueError
            return cls(index=int(index), count=int(count))
        except ValueError as exc:
            detail = f": {exc}" if str(exc) else ""
            raise ValueError(f"shard {text!r} is not I/N (e.g. 2/4){detail}") from None

    def bounds(self, total: int) -> tuple[int, int]:
        """``[start, end)`` of this part of ``total`` things (part sizes differ by at most one)."""
        return (self.index - 1) * total // self.count, self.index * total // self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def select_identities(
    identities: Sequence[DeviceIdentity], *, shard: Shard | None = None, offset: int = 0, devices: int | None = None
) -> list[DeviceIdentity]:
    """The identities one process runs: the shard's part (all without one), then skip ``offset``, then the first
    ``devices``. Disjoint shards of one manifest never share a thing. ValueError when nothing is left."""
    chosen = list(identities)
    if shard is not None:
        start, end = shard.bounds(len(chosen))
        chosen = chosen[start:end]
    if offset < 0:
        raise ValueError("offset must be >= 0")
    if offset >= len(chosen):
        where = f"shard {shard.index}/{shard.count} has" if shard else "the manifest has"
        raise ValueError(f"offset {offset} skips every device: {where} {len(chosen)} things")
    chosen = chosen[offset:]
    if devices is not None:
        if devices < 1:
            raise ValueError("devices must be >= 1")
        if devices > len(chosen):
            raise ValueError(f"only {len(chosen)} things are left to run after the shard/offset, not {devices}")
        chosen = chosen[:devices]
    return chosen


def _load(path: Path) -> Manifest:
    try:
        return load_manifest(path)
    except ProvisionerError as exc:
        raise PlanError(str(exc)) from exc


def read_target(manifest: Path | Manifest, *, no_tls: bool = False) -> tuple[FleetTarget, list[DeviceIdentity]]:
    """The fleet's target and the identities of every thing with certificates (all things with ``no_tls``)."""
    m = manifest if isinstance(manifest, Manifest) else _load(manifest)
    if m.mqtt is None or m.stream is None:
        raise PlanError("the manifest has no MQTT endpoint or no stream: run `provisioner up` first")
    port = m.mqtt.port
    if no_tls:
        if m.mqtt.plain_port is None:
            raise PlanError("--no-tls needs a plain MQTT port in the manifest (local brokers only)")
        port = m.mqtt.plain_port
    target = FleetTarget(
        endpoint=m.mqtt.host,
        port=port,
        stream_id=m.stream.stream_id,
        ca=None if no_tls else m.mqtt.ca_path,
        no_tls=no_tls,
        aws_endpoint_url=m.aws_endpoint_url,
        region=m.region,
    )
    identities = [
        DeviceIdentity(thing_name=t.name, cert=None if no_tls else t.cert_path, key=None if no_tls else t.key_path)
        for t in m.things
        if no_tls or (t.cert_path is not None and t.key_path is not None)
    ]
    return target, identities


def stream_file_sizes(manifest: Path | Manifest) -> dict[int, int]:
    """``{file id: size in bytes}`` of the manifest's stream, from its uploaded objects (empty when unknown): lets a
    sweep refuse a setting a device library cannot take for these files before running it."""
    m = manifest if isinstance(manifest, Manifest) else _load(manifest)
    if m.stream is None:
        return {}
    sizes = {(f.bucket, f.key): f.size for f in m.firmware}
    out: dict[int, int] = {}
    for f in m.stream.files:
        size = sizes.get((f.bucket, f.key))
        if size is not None:
            out[f.file_id] = size
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class SingleDevice:
    """One thing of a manifest, for ``device-sim download --manifest``: the target and that thing's identity."""

    target: FleetTarget
    identity: DeviceIdentity
    plain_port: int | None  # the broker's plain port, when the manifest records one


def device_from_manifest(path: Path, thing: str | None) -> SingleDevice:
    """The endpoint, certificates and stream for ``thing`` (the first thing when None)."""
    m = _load(path)
    if m.mqtt is None:
        raise PlanError(f"{path} has no MQTT endpoint: run `provisioner up` with --mqtt-endpoint")
    if m.stream is None:
        raise PlanError(f"{path} records no stream: run `provisioner up` first")
    if not m.things:
        raise PlanError(f"{path} records no things: run `provisioner up --things N`")
    names = [t.name for t in m.things]
    record = m.thing(thing) if thing else m.things[0]
    if record is None:
        raise PlanError(f"thing {thing!r} is not in {path} (it has {', '.join(names[:5])}...)")
    if record.cert_path is None or record.key_path is None:
        raise PlanError(f"thing {record.name} has no certificate files in {path}")
    target, _ = read_target(m)
    return SingleDevice(
        target=target,
        identity=DeviceIdentity(thing_name=record.name, cert=record.cert_path, key=record.key_path),
        plain_port=m.mqtt.plain_port,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _fields_json(obj: Any) -> dict[str, Any]:
    return {f.name: _jsonable(getattr(obj, f.name)) for f in fields(obj)}


def _jobs_from_json(data: Mapping[str, Any] | None) -> JobSettings | None:
    if data is None:
        return None
    values = dict(data)
    if values.get("signing_cert") is not None:
        values["signing_cert"] = Path(values["signing_cert"])
    return JobSettings(**values)


def _download_from_json(data: Mapping[str, Any]) -> DownloadSettings:
    values = dict(data)
    for name in ("out", "state_dir"):
        if values.get(name) is not None:
            values[name] = Path(values[name])
    if values.get("file_ids") is not None:
        values["file_ids"] = tuple(values["file_ids"])
    return DownloadSettings(**values)


_TRANSPORT_ENUMS: dict[str, Any] = {"protocol": MqttProtocol, "flow_control": FlowControl, "qos": QoS}


def _transport_from_json(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return {k: _TRANSPORT_ENUMS[k](v) if k in _TRANSPORT_ENUMS else v for k, v in data.items()}


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetPlan:
    """A whole fleet run as data: which things, how they download, where the reports go."""

    manifest: Path
    no_tls: bool = False
    shard: Shard | None = None
    offset: int = 0
    devices: int | None = None
    download: DownloadSettings = field(default_factory=lambda: DownloadSettings(sink=SinkKind.DIGEST))
    fleet: FleetSettings = field(default_factory=FleetSettings)
    report_dir: Path = Path("reports")
    #: Every device follows its next OTA job (``fleet --jobs``) instead of downloading the manifest's stream. A
    #: ``signing_cert`` given here must be at that path on every machine; None: each machine's manifest's.
    jobs: JobSettings | None = None
    #: Resolved from the manifest by ``load``; not part of the JSON (each machine reads its own manifest).
    target: FleetTarget | None = None
    identities: tuple[DeviceIdentity, ...] = ()

    @classmethod
    def load(cls, manifest: Path, **settings: Any) -> FleetPlan:
        """Read ``manifest`` and select the things; PlanError says what to fix."""
        return cls(manifest=Path(manifest), **settings).resolved()

    def resolved(self, manifest: Path | None = None) -> FleetPlan:
        """This plan with target and identities read from ``manifest`` (default: the plan's own)."""
        path = Path(manifest) if manifest is not None else self.manifest
        target, identities = read_target(path, no_tls=self.no_tls)
        if not identities:
            raise PlanError(f"{path} has no things with certificates: run `provisioner up --things N`")
        try:
            chosen = select_identities(identities, shard=self.shard, offset=self.offset, devices=self.devices)
        except ValueError as exc:
            raise PlanError(f"--shard/--offset/--devices: {exc}") from None
        return replace(self, manifest=path, target=target, identities=tuple(chosen))

    @property
    def label(self) -> str:
        return self.download.label

    @property
    def verify_with_s3(self) -> bool:
        """Whether devices verify against the S3 objects (not with --no-verify-s3 or --expect-sha256)."""
        return self.download.verify_s3 and self.download.expect_sha256 is None

    def to_json(self) -> str:
        return json.dumps(
            {
                "manifest": str(self.manifest),
                "no_tls": self.no_tls,
                "shard": str(self.shard) if self.shard else None,
                "offset": self.offset,
                "devices": self.devices,
                "download": _fields_json(self.download),
                "fleet": _fields_json(self.fleet),
                "report_dir": str(self.report_dir),
                "jobs": _fields_json(self.jobs) if self.jobs is not None else None,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str, *, manifest: Path | None = None) -> FleetPlan:
        """The plan ``to_json`` wrote, resolved against ``manifest`` (this machine's copy) or the one it names."""
        try:
            data = json.loads(text)
            plan = cls(
                manifest=Path(data["manifest"]),
                no_tls=bool(data["no_tls"]),
                shard=Shard.parse(data["shard"]) if data.get("shard") else None,
                offset=int(data["offset"]),
                devices=data.get("devices"),
                download=_download_from_json(data["download"]),
                fleet=FleetSettings(**{**data["fleet"], "transport": _transport_from_json(data["fleet"]["transport"])}),
                report_dir=Path(data["report_dir"]),
                jobs=_jobs_from_json(data.get("jobs")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"not a fleet plan: {exc!r}") from None
        return plan.resolved(manifest)


def s3_source(target: FleetTarget) -> S3Source:
    """The S3 source that verifies the target's stream: at ``AWS_ENDPOINT_URL`` when the shell sets one, else at the
    manifest's endpoint (local_iot), else the real service. The environment is read, never written."""
    return S3Source.connect(
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or target.aws_endpoint_url,
        region=target.region,
    )
