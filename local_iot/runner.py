"""``LocalIot``: the whole offline AWS IoT stand-in in one object (CA, mosquitto, control plane, stream service).

How this works: ``start()`` creates (or reuses) a local CA in ``<state_dir>/ca`` with a server certificate for
localhost/127.0.0.1, starts mosquitto (plain + mutual-TLS listeners, per-thing ACL) on free ports, starts moto's
server with the stream API in a thread, starts the stream service as an MQTT client of the plain listener, and
writes ``<state_dir>/local-iot.json``, the file the provisioner (``--local DIR``) and users read. ``stop()`` stops
them in reverse order; every child process is stopped by its PID. Use it as a context manager.

moto keeps its state per process: two ``LocalIot`` in one process see the same S3 buckets, roles and streams.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .broker import BrokerConfig, MosquittoBroker
from .ca import CertPaths, LocalCA
from .control_plane import ControlPlane
from .service_mqtt import StreamService

__all__ = ["INFO_FILE", "LocalIot", "LocalIotError", "LocalIotSettings", "load_info"]

log = logging.getLogger(__name__)

INFO_FILE = "local-iot.json"


class LocalIotError(Exception):
    """local_iot could not start; the message says which part and what to do."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalIotSettings:
    state_dir: Path
    host: str = "127.0.0.1"
    mqtt_port: int = 0  # 0: a free port
    tls_port: int = 0
    aws_port: int = 0
    region: str = "us-east-1"
    latency_ms: float = 0.0
    quotas: str = "none"  # "none" | "aws" | a quota spec (see docs/service.md)
    faults: str | None = None  # fault spec (see docs/service.md)
    seed: int = 0


class LocalIot:
    """Start and stop everything; ``info`` is what ``local-iot.json`` holds."""

    def __init__(self, settings: LocalIotSettings) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir).resolve()
        self.ca: LocalCA | None = None
        self.broker: MosquittoBroker | None = None
        self.control_plane: ControlPlane | None = None
        self.service: StreamService | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> LocalIot:
        s = self.settings
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.ca = LocalCA.create(self.state_dir / "ca")
            server_cert, server_key = self.ca.issue_server_cert(self.state_dir / "ca", hosts=_server_hosts(s.host))
            self.broker = MosquittoBroker(
                BrokerConfig(
                    state_dir=self.state_dir / "broker",
                    host=s.host,
                    mqtt_port=s.mqtt_port,
                    tls_port=s.tls_port,
                    ca_cert=self.ca.cert_path,
                    server_cert=server_cert,
                    server_key=server_key,
                )
            ).start()
            self.control_plane = ControlPlane(host=s.host, port=s.aws_port, region=s.region).start()
            self.service = StreamService(
                self.control_plane.catalog,
                host=s.host,
                port=self.broker.mqtt_port,
                latency_ms=s.latency_ms,
                quotas=None if s.quotas == "none" else s.quotas,
                faults=s.faults,
                seed=s.seed,
            ).start()
            _write_json(self.state_dir / INFO_FILE, self.info)
        except BaseException:
            self.stop()
            raise
        log.info("local_iot up: %s", self.info)
        return self

    def stop(self) -> None:
        """Stop the service, the control plane and the broker (by PID). Safe to call twice."""
        errors: list[str] = []
        for name in ("service", "control_plane", "broker"):
            part = getattr(self, name)
            if part is None:
                continue
            try:
                part.stop()
            except Exception as exc:  # keep stopping the others; report at the end
                log.exception("stopping %s failed", name)
                errors.append(f"{name}: {exc}")
            setattr(self, name, None)
        info = self.state_dir / INFO_FILE
        info.unlink(missing_ok=True)
        if errors:
            raise LocalIotError("could not stop cleanly: " + "; ".join(errors))

    def __enter__(self) -> LocalIot:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what clients need ------------------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        broker, control, ca = self._require()
        return {
            "mqtt_host": broker.host,
            "mqtt_port": broker.mqtt_port,
            "tls_port": broker.tls_port,
            "ca_cert": str(ca.cert_path),
            "ca_key": str(ca.key_path),
            "aws_endpoint_url": control.endpoint_url,
            "region": control.region,
            "account_id": control.account_id,
            "latency_ms": self.settings.latency_ms,
            "quotas": self.settings.quotas,
            "faults": self.settings.faults,
            "seed": self.settings.seed,
            "broker_pid": broker.pid,
            "state_dir": str(self.state_dir),
        }

    def environment(self) -> dict[str, str]:
        """AWS_ENDPOINT_URL, dummy credentials and region for boto3's standard chain."""
        return self._require()[1].environment()

    def client(self, service_name: str, **kwargs: Any) -> Any:
        """A boto3 client of the control plane with dummy credentials."""
        return self._require()[1].client(service_name, **kwargs)

    def issue_device(self, thing_name: str, directory: Path) -> CertPaths:
        """A device certificate (CN = thing name) and key (0600) from the local CA, written to ``directory``."""
        return self._require()[2].issue_device_files(directory, thing_name)

    def _require(self) -> tuple[MosquittoBroker, ControlPlane, LocalCA]:
        if self.broker is None or self.control_plane is None or self.ca is None:
            raise LocalIotError("local_iot is not running: call start() first")
        return self.broker, self.control_plane, self.ca


def load_info(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``<state_dir>/local-iot.json``; a clear error when local_iot is not running there."""
    path = Path(state_dir) / INFO_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise LocalIotError(f"{path} does not exist: start `local-iot up --state-dir {state_dir}` first") from None
    except (OSError, ValueError) as exc:
        raise LocalIotError(f"cannot read {path}: {exc}") from exc
    return data


def _server_hosts(host: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(("localhost", "127.0.0.1", host)))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
