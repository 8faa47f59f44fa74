"""Messages of a Locust fleet run: master <-> worker (Locust custom messages) and worker <-> device host (JSON lines).

Every message is a frozen dataclass with ``to_wire()`` (a JSON/msgpack-ready dict) and ``from_wire(dict)``, which
raises ``WireError`` for anything malformed (a peer of another version, a corrupted pipe): the receiver reports
that instead of crashing on a ``KeyError`` deep inside.

Master <-> worker, by Locust message type:
  ``device_sim:claim``   worker -> master  ``Claim``: "my users want N devices" (coalesced per scheduler tick)
  ``device_sim:grant``   master -> worker  ``Grant``: the devices (index, thing, start delay) and the run's epoch
  ``device_sim:records`` worker -> master  ``Records``: finished devices' ``DeviceMetrics`` and live counters
  ``device_sim:stop``    master -> worker  ``Stop``: cancel every device now (deadline, Ctrl-C)
  ``device_sim:worker_failed`` worker -> master ``Stop``: this worker's device host failed; it quits (the reason)
Worker <-> device host, one JSON object per line with an ``op``: ``Config``/``Run``/``Stop`` to the host,
``Ready``/``HostFailed``/``Finished``/``Progress`` from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "CLAIM",
    "GRANT",
    "RECORDS",
    "STOP",
    "WORKER_FAILED",
    "Claim",
    "Config",
    "Finished",
    "Grant",
    "Granted",
    "HostFailed",
    "HostOp",
    "Progress",
    "Ready",
    "Records",
    "Run",
    "Stop",
    "WireError",
    "decode_host_line",
    "encode_host_line",
]

CLAIM = "device_sim:claim"
GRANT = "device_sim:grant"
RECORDS = "device_sim:records"
STOP = "device_sim:stop"
WORKER_FAILED = "device_sim:worker_failed"


class WireError(ValueError):
    """A message from another process of the run that is not valid (version mismatch or a corrupted pipe)."""


def _int(data: Mapping[str, Any], key: str, *, minimum: int = 0) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise WireError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _float(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise WireError(f"{key} must be a finite number >= 0, got {value!r}")
    return float(value)


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise WireError(f"{key} must be text, got {value!r}")
    return value


def _mapping(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise WireError(f"{what} must be an object, got {type(data).__name__}")
    return data


@dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """Live counters of one device host (``FleetProgress``'s fields)."""

    connecting: int = 0
    downloading: int = 0
    verified: int = 0
    failed: int = 0
    bytes: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_wire(cls, data: object) -> Progress:
        data = _mapping(data, "progress")
        return cls(**{name: _int(data, name) for name in cls.__slots__})

    def __add__(self, other: Progress) -> Progress:
        return Progress(**{name: getattr(self, name) + getattr(other, name) for name in self.__slots__})


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    count: int
    pid: int  # the Locust worker's process id (named when the worker is lost)
    hostname: str
    host_pid: int = 0  # its device host's process id (0: not started)

    def to_wire(self) -> dict[str, Any]:
        return {"count": self.count, "pid": self.pid, "hostname": self.hostname, "host_pid": self.host_pid}

    @classmethod
    def from_wire(cls, data: object) -> Claim:
        data = _mapping(data, "claim")
        return cls(
            count=_int(data, "count", minimum=1),
            pid=_int(data, "pid"),
            hostname=_str(data, "hostname"),
            host_pid=_int(data, "host_pid") if "host_pid" in data else 0,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Granted:
    index: int  # position in the master's identity list (the order of the reports)
    thing_name: str
    delay_s: float  # start after this long (spreads the 1-second spawn staircase)


@dataclass(frozen=True, kw_only=True, slots=True)
class Grant:
    devices: tuple[Granted, ...]  # may be shorter than the claim (no devices left): the rest park
    asked: int  # the claim's count
    epoch: float  # time.time() when the master started the run (device times count from it)

    def to_wire(self) -> dict[str, Any]:
        return {
            "devices": [[d.index, d.thing_name, d.delay_s] for d in self.devices],
            "asked": self.asked,
            "epoch": self.epoch,
        }

    @classmethod
    def from_wire(cls, data: object) -> Grant:
        data = _mapping(data, "grant")
        raw = data.get("devices")
        if not isinstance(raw, list):
            raise WireError(f"devices must be a list, got {raw!r}")
        devices = []
        for item in raw:
            if not isinstance(item, list | tuple) or len(item) != 3:
                raise WireError(f"a granted device must be [index, thing, delay], got {item!r}")
            entry = {"index": item[0], "thing": item[1], "delay": item[2]}
            devices.append(
                Granted(index=_int(entry, "index"), thing_name=_str(entry, "thing"), delay_s=_float(entry, "delay"))
            )
        asked = _int(data, "asked", minimum=1)
        if len(devices) > asked:
            raise WireError(f"{len(devices)} devices granted for a claim of {asked}")
        return cls(devices=tuple(devices), asked=asked, epoch=_float(data, "epoch"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Records:
    records: tuple[tuple[int, Mapping[str, Any]], ...]  # (index, DeviceMetrics.to_dict())
    progress: Progress | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "records": [[index, dict(record)] for index, record in self.records],
            "progress": self.progress.to_wire() if self.progress is not None else None,
        }

    @classmethod
    def from_wire(cls, data: object) -> Records:
        data = _mapping(data, "records message")
        raw = data.get("records")
        if not isinstance(raw, list):
            raise WireError(f"records must be a list, got {raw!r}")
        records = []
        for item in raw:
            if not isinstance(item, list | tuple) or len(item) != 2 or not isinstance(item[1], Mapping):
                raise WireError(f"a record must be [index, object], got {item!r}")
            records.append((_int({"index": item[0]}, "index"), item[1]))
        progress = data.get("progress")
        return cls(records=tuple(records), progress=None if progress is None else Progress.from_wire(progress))


@dataclass(frozen=True, kw_only=True, slots=True)
class Stop:
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_wire(cls, data: object) -> Stop:
        return cls(reason=_str(_mapping(data, "stop"), "reason"))


# ------------------------------------------------------------------------------------- worker <-> device host


class HostOp(StrEnum):
    CONFIG = "config"  # -> host: the fleet plan (FleetPlan.to_json) and this machine's manifest
    RUN = "run"  # -> host: start one device
    STOP = "stop"  # -> host: cancel every device (each still reports)
    READY = "ready"  # <- host: configured; how many identities its manifest has
    FAILED = "failed"  # <- host: cannot run any device (bad arguments, manifest missing): why
    FINISHED = "finished"  # <- host: one device's record
    PROGRESS = "progress"  # <- host: live counters


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    plan: str  # FleetPlan.to_json()
    manifest: str | None = None  # this machine's copy of the manifest, when not at the master's path


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    index: int
    thing_name: str
    delay_s: float
    epoch: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Ready:
    pid: int
    identities: int


@dataclass(frozen=True, kw_only=True, slots=True)
class HostFailed:
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Finished:
    index: int
    record: Mapping[str, Any]


HostMessage = Config | Run | Stop | Ready | HostFailed | Finished | Progress


def encode_host_line(message: HostMessage) -> bytes:
    """One message as a JSON line."""
    match message:
        case Config(plan=plan, manifest=manifest):
            body: dict[str, Any] = {"op": HostOp.CONFIG, "plan": plan, "manifest": manifest}
        case Run():
            body = {
                "op": HostOp.RUN,
                "index": message.index,
                "thing": message.thing_name,
                "delay": message.delay_s,
                "epoch": message.epoch,
            }
        case Stop(reason=reason):
            body = {"op": HostOp.STOP, "reason": reason}
        case Ready(pid=pid, identities=identities):
            body = {"op": HostOp.READY, "pid": pid, "identities": identities}
        case HostFailed(message=text):
            body = {"op": HostOp.FAILED, "message": text}
        case Finished(index=index, record=record):
            body = {"op": HostOp.FINISHED, "index": index, "record": dict(record)}
        case Progress():
            body = {"op": HostOp.PROGRESS, **message.to_wire()}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode_host_line(line: bytes) -> HostMessage:
    """The message of one JSON line; ``WireError`` if it is not one."""
    try:
        data = _mapping(json.loads(line), "a host message")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WireError(f"not a JSON line: {line[:80]!r}") from exc
    try:
        op = HostOp(str(data.get("op")))
    except ValueError:
        raise WireError(f"unknown op {data.get('op')!r}") from None
    match op:
        case HostOp.CONFIG:
            plan = data.get("plan")
            if not isinstance(plan, str):
                raise WireError(f"plan must be text, got {plan!r}")
            manifest = data.get("manifest")
            if manifest is not None and not isinstance(manifest, str):
                raise WireError(f"manifest must be text, got {manifest!r}")
            return Config(plan=plan, manifest=manifest)
        case HostOp.RUN:
            return Run(
                index=_int(data, "index"),
                thing_name=_str(data, "thing"),
                delay_s=_float(data, "delay"),
                epoch=_float(data, "epoch"),
            )
        case HostOp.STOP:
            return Stop(reason=_str(data, "reason"))
        case HostOp.READY:
            return Ready(pid=_int(data, "pid"), identities=_int(data, "identities"))
        case HostOp.FAILED:
            return HostFailed(message=_str(data, "message"))
        case HostOp.FINISHED:
            return Finished(index=_int(data, "index"), record=_mapping(data.get("record"), "record"))
        case HostOp.PROGRESS:
            return Progress.from_wire(data)
