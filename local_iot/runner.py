"""``LocalIot``: the whole offline AWS IoT stand-in in one object (CA, mosquitto, control plane, stream service).

How this works: ``start()`` takes the state dir's lock (``<state_dir>/.lock``, an flock held while running: a
second emulator on the same dir is refused with the holder's pid), reads the previous ``local-iot.json`` (ports to
reuse), creates (or reuses) a local CA in ``<state_dir>/ca`` and a server certificate for localhost, 127.0.0.1
and the advertised names (re-issued only when that list changes), restores the control plane's saved state
(``control-plane.pickle``), starts moto's server with the stream API in a thread, writes the certificate registry
the broker plugin follows, starts mosquitto (plain listener on loopback, mutual-TLS listener on ``host``) and the
stream service, and writes ``<state_dir>/local-iot.json``, the file the provisioner (``--local DIR``) and users
read. A supervisor thread restarts a broker that dies, on the same ports, and reports a part it cannot bring back
(``failure``, ``wait_failed``). ``stop()`` stops everything in reverse order (every child process by its PID),
saves the control plane's state and marks ``local-iot.json`` as stopped (its ports are kept for the next start).

moto keeps its state per process: two ``LocalIot`` in one process see the same S3 buckets, roles and streams.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509

from .broker import BrokerConfig, BrokerError, MosquittoBroker
from .ca import SERVER_CERT_NAME, CertPaths, LocalCA
from .control_plane import ControlChange, ControlPlane, ControlPlaneError
from .files import private_dir, write_private
from .jobs.mqtt import JobsService
from .persistence import STATE_FILE, RegistryWriter, StateSaver, restore
from .service_mqtt import StreamService

__all__ = ["INFO_FILE", "LOCAL_HOST", "LocalIot", "LocalIotError", "LocalIotSettings", "load_info", "reset_state"]

log = logging.getLogger(__name__)

INFO_FILE = "local-iot.json"
LOCK_FILE = ".lock"
REGISTRY_NAME = "registry"
#: The plain MQTT listener and the control plane: unauthenticated, for local tools only, always on loopback.
LOCAL_HOST = "127.0.0.1"
_SUPERVISE_INTERVAL = 0.05
_RESTART_ATTEMPTS = 5


class LocalIotError(Exception):
    """local_iot could not start; the message says which part and what to do."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalIotSettings:
    state_dir: Path
    host: str = "127.0.0.1"  # where the devices' mutual-TLS listener binds (the plain one and moto stay local)
    advertise: tuple[str, ...] = ()  # names/addresses devices dial: server certificate SANs, device endpoint
    mqtt_port: int = 0  # 0: a free port (or the one recorded in local-iot.json)
    tls_port: int = 0
    aws_port: int = 0
    plain_port: bool = True  # False: no anonymous TCP listener (the service uses a Unix socket)
    region: str = "us-east-1"
    latency_ms: float = 0.0
    quotas: str = "none"  # "none" | "aws" | a quota spec (see docs/service.md)
    faults: str | None = None  # fault spec (see docs/service.md)
    seed: int = 0
    persist: bool = True  # keep the control plane's state in the state dir across restarts
    jobs_minute_s: float = 60.0  # the length of a Jobs minute (step timeouts, rollout rates); tests shorten it

    def __post_init__(self) -> None:
        if not math.isfinite(self.latency_ms) or self.latency_ms < 0:
            raise ValueError(f"latency_ms must be a finite number >= 0, not {self.latency_ms!r}")
        if not math.isfinite(self.jobs_minute_s) or self.jobs_minute_s <= 0:
            raise ValueError(f"jobs_minute_s must be a finite number > 0, not {self.jobs_minute_s!r}")
        for name in self.advertise:
            if not name or any(c.isspace() or c in ",/" for c in name):
                raise ValueError(f"{name!r} is not a host name or address to advertise")


class LocalIot:
    """Start and stop everything; ``info`` is what ``local-iot.json`` holds."""

    def __init__(self, settings: LocalIotSettings) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir).resolve()
        self.ca: LocalCA | None = None
        self.broker: MosquittoBroker | None = None
        self.control_plane: ControlPlane | None = None
        self.service: StreamService | None = None
        self.jobs: JobsService | None = None
        self.failure: str | None = None
        self._failed = threading.Event()
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()
        self._lock_fd: int | None = None
        self._saver: StateSaver | None = None
        self._registry: RegistryWriter | None = None
        self._supervisor: threading.Thread | None = None
        self._server_hosts: tuple[str, ...] = ()

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> LocalIot:
        s = self.settings
        private_dir(self.state_dir)
        self._take_lock()
        previous: dict[str, Any] | None = None
        try:
            previous = _previous_info(self.state_dir)
            self._clean_stale(previous)
            self.ca = LocalCA.create(private_dir(self.state_dir / "ca"))
            self._server_hosts = _server_hosts(s.host, s.advertise)
            server_cert, server_key = self._server_certificate()
            control = ControlPlane(host=LOCAL_HOST, port=s.aws_port or _recorded(previous, "aws_port"), region=s.region)
            state_file = self.state_dir / STATE_FILE
            if s.persist and state_file.exists():
                restore(state_file.read_bytes())
                log.info("control plane state restored from %s", state_file)
            self.control_plane = control.start()
            broker_dir = private_dir(self.state_dir / "broker")
            self._registry = RegistryWriter(broker_dir / REGISTRY_NAME, control.account_id, control.region)
            with control.lock:
                self._registry.rebuild()
            if s.persist:
                self._saver = StateSaver(state_file, control.lock).start()
            control.add_change_listener(self._on_control_change)
            self.broker = MosquittoBroker(
                BrokerConfig(
                    state_dir=broker_dir,
                    host=LOCAL_HOST,
                    tls_host=s.host,
                    mqtt_port=(s.mqtt_port or _recorded(previous, "mqtt_port")) if s.plain_port else None,
                    tls_port=s.tls_port or _recorded(previous, "tls_port"),
                    ca_cert=self.ca.cert_path,
                    server_cert=server_cert,
                    server_key=server_key,
                    registry=self._registry.path,
                )
            ).start()
            self.service = StreamService(
                control.catalog,
                host=LOCAL_HOST,
                port=self.broker.mqtt_port if s.plain_port else 0,
                socket_path=None if s.plain_port else str(self.broker.socket_path),
                latency_ms=s.latency_ms,
                quotas=None if s.quotas == "none" else s.quotas,
                faults=s.faults,
                seed=s.seed,
            ).start()
            self.jobs = JobsService(
                account_id=control.account_id,
                region=control.region,
                host=LOCAL_HOST,
                port=self.broker.mqtt_port if s.plain_port else 0,
                socket_path=None if s.plain_port else str(self.broker.socket_path),
                minute=s.jobs_minute_s,
                on_change=self._on_jobs_change,
                direct_replies=self.broker.has_plugin,  # always here: LocalIot's broker runs the plugin
            ).start()
            _write_json(self.state_dir / INFO_FILE, self.info)
            self._supervisor = threading.Thread(target=self._supervise, name="local-iot-supervisor", daemon=True)
            self._supervisor.start()
        except (BrokerError, ControlPlaneError) as exc:
            self.stop()
            asked = {"mqtt_port": s.mqtt_port, "tls_port": s.tls_port, "aws_port": s.aws_port}
            recorded = {_recorded(previous, k) for k, v in asked.items() if not v} - {0}
            first = str(exc).splitlines()[0] if str(exc) else ""  # the rest is mosquitto's log tail
            taken = next((p for p in recorded if f"port {p} " in first or f":{p} " in first), None)
            if taken is not None:
                raise LocalIotError(
                    f"port {taken} recorded in {self.state_dir / INFO_FILE} is in use: free it, pass another port, "
                    f"or start clean with `local-iot reset --state-dir {self.settings.state_dir}`"
                ) from exc
            raise
        except BaseException:
            self.stop()
            raise
        log.info("local_iot up: %s", self.info)
        return self

    def stop(self) -> None:
        """Stop the service, the control plane and the broker (by PID), save the state. Safe to call twice."""
        self._stopping.set()
        errors: list[str] = []
        with self._lifecycle:
            for name in ("jobs", "service", "broker", "control_plane"):
                part = getattr(self, name)
                if part is None:
                    continue
                try:
                    part.stop()
                except Exception as exc:  # keep stopping the others; report at the end
                    log.exception("stopping %s failed", name)
                    errors.append(f"{name}: {exc}")
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join()
        if self._saver is not None:
            try:
                self._saver.stop()
            except Exception as exc:
                log.exception("saving the control plane's state failed")
                errors.append(f"state: {exc}")
            self._saver = None
        self._mark_stopped()
        self.jobs = None
        self.service = self.broker = self.control_plane = None
        self._release_lock()
        if errors:
            raise LocalIotError("could not stop cleanly: " + "; ".join(errors))

    def __enter__(self) -> LocalIot:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait_failed(self, timeout: float | None = None) -> bool:
        """True once a part died and could not be brought back (``failure`` says which and why)."""
        return self._failed.wait(timeout)

    # -- what clients need ------------------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        broker, control, ca = self._require()
        s = self.settings
        return {
            "mqtt_host": broker.host,
            "mqtt_port": broker.mqtt_port if broker.has_plain_port else None,
            "mqtt_socket": None if broker.has_plain_port else str(broker.socket_path),
            "tls_host": broker.tls_host,
            "tls_port": broker.tls_port,
            "device_endpoint": s.advertise[0] if s.advertise else _dialable(broker.tls_host),
            "advertise": list(self._server_hosts),
            "ca_cert": str(ca.cert_path),
            "ca_key": str(ca.key_path),
            "aws_endpoint_url": control.endpoint_url,
            "aws_port": control.port,
            "region": control.region,
            "account_id": control.account_id,
            "latency_ms": s.latency_ms,
            "quotas": s.quotas,
            "faults": s.faults,
            "seed": s.seed,
            "pid": os.getpid(),
            "broker_pid": broker.pid if broker.running else None,
            "running": True,
            "state_dir": str(self.state_dir),
        }

    def environment(self) -> dict[str, str]:
        """AWS_ENDPOINT_URL, dummy credentials and region for boto3's standard chain."""
        return self._require()[1].environment()

    def client(self, service_name: str, **kwargs: Any) -> Any:
        """A boto3 client of the control plane with dummy credentials."""
        return self._require()[1].client(service_name, **kwargs)

    def issue_device(self, thing_name: str, directory: Path, *, register: bool = True) -> CertPaths:
        """A device certificate (CN = thing name) and key (0600) from the local CA, written to ``directory``.

        With ``register`` (the default) it is also provisioned as the provisioner would: the thing is created if
        missing, the certificate registered ACTIVE (``register_certificate_without_ca``) and attached to the
        thing, so the broker lets it connect as ``thing_name``. ``register=False``: a certificate of the local CA
        the control plane does not know (the broker refuses it, as AWS does).
        """
        paths = self._require()[2].issue_device_files(directory, thing_name)
        if register:
            iot = self.client("iot")
            with contextlib.suppress(iot.exceptions.ResourceAlreadyExistsException):
                iot.create_thing(thingName=thing_name)
            cert = iot.register_certificate_without_ca(certificatePem=paths.cert_path.read_text(), status="ACTIVE")
            iot.attach_thing_principal(thingName=thing_name, principal=cert["certificateArn"])
        return paths

    def _require(self) -> tuple[MosquittoBroker, ControlPlane, LocalCA]:
        if self.broker is None or self.control_plane is None or self.ca is None:
            raise LocalIotError("local_iot is not running: call start() first")
        return self.broker, self.control_plane, self.ca

    # -- internals --------------------------------------------------------------------------------------------

    def _on_jobs_change(self) -> None:
        if self._saver is not None:
            self._saver.changed()

    def _on_control_change(self, change: ControlChange) -> None:
        if self._saver is not None:
            self._saver.changed()
        if self._registry is not None:
            self._registry.apply(change)  # only requests that can change it touch the file (registry_effect)

    def _server_certificate(self) -> tuple[Path, Path]:
        """The server certificate in ca/, re-issued only when its SANs are not the wanted hosts."""
        assert self.ca is not None
        ca_dir = self.state_dir / "ca"
        cert_path, key_path = ca_dir / SERVER_CERT_NAME, ca_dir / "server.private.key"
        if cert_path.exists() and key_path.exists():
            try:
                current = _san_hosts(cert_path.read_bytes())
                if current == set(self._server_hosts) and self.ca.verify_issued(cert_path.read_bytes()):
                    return cert_path, key_path
            except ValueError:
                pass
            log.info("server certificate names changed: re-issuing for %s", ", ".join(self._server_hosts))
        return self.ca.issue_server_cert(ca_dir, hosts=self._server_hosts)

    def _supervise(self) -> None:
        """Restart a broker that died, on the same ports; report a part that cannot be brought back."""
        while not self._stopping.wait(_SUPERVISE_INTERVAL):
            broker, control = self.broker, self.control_plane
            if control is not None and not control.alive:
                self._fail("the control plane (moto) stopped serving")
                return
            if broker is None or broker.exited() is None:
                continue
            with self._lifecycle:
                if self._stopping.is_set():
                    return
                code = broker.exited()
                log.warning("mosquitto (pid %d) exited with code %s; restarting it on the same ports", broker.pid, code)
                began = time.monotonic()
                error: Exception | None = None
                for attempt in range(1, _RESTART_ATTEMPTS + 1):
                    try:
                        broker.restart()  # from this thread, which lives as long as the broker (PDEATHSIG)
                        error = None
                        break
                    except BrokerError as exc:
                        error = exc
                        log.warning("broker restart attempt %d/%d failed: %s", attempt, _RESTART_ATTEMPTS, exc)
                        time.sleep(0.2)
                if error is not None:
                    self._fail(f"the broker died and could not be restarted: {str(error).splitlines()[0]}")
                    return
                log.warning(
                    "mosquitto restarted (pid %d) in %.2f s on the same ports; devices may reconnect",
                    broker.pid,
                    time.monotonic() - began,
                )
                with contextlib.suppress(OSError):
                    _write_json(self.state_dir / INFO_FILE, self.info)

    def _fail(self, reason: str) -> None:
        log.error("local_iot: %s", reason)
        self.failure = reason
        self._failed.set()

    def _take_lock(self) -> None:
        path = self.state_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LocalIotError(
                f"state dir {self.state_dir} in use by pid {holder}: stop that local-iot first, or use another "
                "--state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _clean_stale(self, previous: dict[str, Any] | None) -> None:
        """A broker left by a killed run (older local_iot without PDEATHSIG, or a kill between fork and prctl)."""
        pid = (previous or {}).get("broker_pid")
        if not isinstance(pid, int) or pid <= 0:
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return  # gone
        config = str(self.state_dir / "broker" / "mosquitto.conf").encode()
        if config in cmdline:
            log.warning("stopping mosquitto pid %d left running by a killed local-iot on this state dir", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.02)

    def _mark_stopped(self) -> None:
        path = self.state_dir / INFO_FILE
        data = _previous_info(self.state_dir)
        if data is None or data.get("pid") != os.getpid():
            return
        data.update(running=False, broker_pid=None, pid=None)
        with contextlib.suppress(OSError):
            _write_json(path, data)


def load_info(state_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``<state_dir>/local-iot.json`` of a running local_iot; a clear error when it is not running there."""
    path = Path(state_dir) / INFO_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise LocalIotError(f"{path} does not exist: start `local-iot up --state-dir {state_dir}` first") from None
    except (OSError, ValueError) as exc:
        raise LocalIotError(f"cannot read {path}: {exc}") from exc
    if data.get("running") is False:
        raise LocalIotError(f"local_iot is not running on {state_dir}: start `local-iot up --state-dir {state_dir}`")
    return data


def reset_state(state_dir: Path, *, keep_ca: bool = True) -> list[Path]:
    """Forget a state dir's control plane, ports and broker files (and the CA unless ``keep_ca``); refused while
    a local-iot runs on it. Returns what was removed."""
    state_dir = Path(state_dir)
    if not state_dir.exists():
        return []
    probe = LocalIot(LocalIotSettings(state_dir=state_dir))
    probe._take_lock()
    removed: list[Path] = []
    try:
        for name in (STATE_FILE, INFO_FILE):
            path = state_dir / name
            if path.exists():
                path.unlink()
                removed.append(path)
        targets = [state_dir / "broker"] + ([] if keep_ca else [state_dir / "ca"])
        for directory in targets:
            if directory.is_dir():
                for child in sorted(directory.rglob("*"), reverse=True):
                    child.unlink() if not child.is_dir() or child.is_symlink() else child.rmdir()
                directory.rmdir()
                removed.append(directory)
    finally:
        probe._release_lock()
    return removed


def _previous_info(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _recorded(previous: dict[str, Any] | None, key: str) -> int:
    value = (previous or {}).get(key)
    return value if isinstance(value, int) and 0 < value < 65536 else 0


def _server_hosts(host: str, advertise: tuple[str, ...]) -> tuple[str, ...]:
    hosts = ["localhost", "127.0.0.1"]
    if host not in ("0.0.0.0", "::"):
        hosts.append(host)
    return tuple(dict.fromkeys([*hosts, *advertise]))


def _dialable(host: str) -> str:
    return LOCAL_HOST if host in ("0.0.0.0", "::") else host


def _san_hosts(cert_pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    return names | {str(a) for a in sans.get_values_for_type(x509.IPAddress)}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_private(path, json.dumps(data, indent=2) + "\n")
