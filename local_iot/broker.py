"""Run a private mosquitto as a child process: a plain listener and a mutual-TLS listener with a per-thing ACL.

How this works: ``MosquittoBroker.start()`` picks free ports (mosquitto cannot listen on port 0), writes
``mosquitto.conf`` and ``acl`` into the state directory and starts ``mosquitto -c mosquitto.conf``. It is ready when
its log says ``running`` (written after every listener is bound) and both ports accept a TCP connection. If the
process exits first because another process grabbed a chosen port in the meantime, it retries with new ports; any
other failure raises ``BrokerStartError`` with the tail of the log. ``stop()`` sends SIGTERM to the PID, waits, and
sends SIGKILL after a timeout.

The configuration (see docs/broker.md for the why of each line):
- ``per_listener_settings true``: the device policy applies to the TLS listener only, so the plain listener (the
  stream service, benches; loopback only) may use every topic, ``$aws/...`` included.
- TLS listener: ``require_certificate`` and local_iot's plugin (``local_iot/plugin/local_iot_plugin.c``, built by
  ``local_iot.plugin_build``): the client id must be a thing attached to a registered ACTIVE certificate (or, without
  a registry, the certificate's CN), a device may only use its own thing's stream topics, and a SUBSCRIBE outside
  them is refused in the SUBACK; a Jobs answer the Jobs service publishes on ``local-iot/jobs-reply/<thing>/...``
  is delivered to client ``<thing>`` alone, subscribed or not. ``plugin=False`` falls back to the ACL file
  (``pattern readwrite $aws/things/%u/streams/#``, granted SUBACKs, any client id; Jobs answers reach subscribers
  only).
- ``set_tcp_nodelay true``; ``max_queued_messages 1000``: at most 1000 messages wait for one client (a client that
  stops reading cannot grow the broker without bound; a download asks for at most 512 blocks per request);
  ``persistence false``; ``user root`` when run as root (otherwise mosquitto switches to user ``mosquitto`` and
  cannot read the key files in our state directory).

The child dies with us: it is started with ``PR_SET_PDEATHSIG`` = SIGKILL, so even a SIGKILL of this process does
not leave a mosquitto behind. (Linux ties the death signal to the *thread* that started the child: start and
restart the broker from a thread that lives as long as the broker, as ``LocalIot`` does.) ``restart()`` starts it
again on the same ports after it died.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .ca import LocalCA
from .files import private_dir, write_private
from .plugin_build import PluginBuildError, plugin_path
from .ports import free_ports

log = logging.getLogger(__name__)

CONFIG_NAME = "mosquitto.conf"
ACL_NAME = "acl"
LOG_NAME = "mosquitto.log"
STDERR_NAME = "mosquitto.stderr"
#: The ACL rule that mirrors the AWS device policy: a certificate may only use its own thing's stream topics.
DEVICE_ACL_PATTERN = "pattern readwrite $aws/things/%u/streams/#\npattern readwrite $aws/things/%u/jobs/#"
#: What a device may use with the plugin (%c = its client id = its thing name): the AWS device policy for streams.
DEVICE_TOPIC_PREFIXES = ("$aws/things/%c/streams/", "$aws/things/%c/jobs/")  # jobs: the device's own Jobs API
SOCKET_NAME = "mqtt.sock"
DEFAULT_MAX_QUEUED_MESSAGES = 1000
_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_IN_USE_MARKER = "Address already in use"
_OPENING = re.compile(r"Opening ipv[46] listen socket on port (\d+)")
_READY_MARKER = " running"
_START_ATTEMPTS = 5
_POLL_INTERVAL = 0.02


class BrokerError(Exception):
    """Base of the broker's errors."""


class MosquittoNotFoundError(BrokerError):
    """No mosquitto binary: the environment needs it installed."""


class BrokerUsageError(BrokerError):
    """The caller used the broker out of order (e.g. read a port before start())."""


class BrokerStartError(BrokerError):
    """mosquitto did not come up; ``log_tail`` holds the last lines it wrote."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- mosquitto log tail ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerConfig:
    """Where and how to run mosquitto.

    Ports 0 mean "pick a free one". ``tls_port=None`` runs no TLS listener. ``mqtt_port=None`` runs no plain TCP
    listener: the plain (anonymous, every topic) listener is then a Unix socket ``state_dir/mqtt.sock`` (mode 0700
    directory), for the stream service only. ``host`` is the plain listener's address (keep it on loopback);
    ``tls_host`` (default: ``host``) is the TLS listener's, the one devices dial. When the three certificate paths
    are None and TLS is on, a local CA is created (or reused) in ``state_dir/ca`` with a server certificate for
    ``localhost`` and ``127.0.0.1``; ``MosquittoBroker.ca`` then issues device certificates.

    ``plugin`` (default on) puts local_iot's plugin on the TLS listener; ``registry`` is the certificate registry
    file it follows (written by ``local_iot.registry``); without one, the client id must equal the certificate's CN.
    """

    state_dir: Path
    host: str = "127.0.0.1"
    mqtt_port: int | None = 0
    tls_port: int | None = 0
    tls_host: str | None = None
    plugin: bool = True
    registry: Path | None = None
    allow_topics: tuple[str, ...] = DEVICE_TOPIC_PREFIXES
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    max_packet_size: int = 262_144  # a 128 KiB block as JSON + Base64 is ~175 KB
    max_inflight_messages: int = 100  # AWS: 100 unacknowledged QoS 1 messages per client
    mosquitto_path: str | None = None
    start_timeout: float = 10.0
    stop_timeout: float = 5.0

    def __post_init__(self) -> None:
        tls_paths = (self.ca_cert, self.server_cert, self.server_key)
        if any(p is None for p in tls_paths) and any(p is not None for p in tls_paths):
            raise ValueError("give all of ca_cert, server_cert and server_key, or none (a local CA is then created)")
        for port in (self.mqtt_port, self.tls_port):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"port {port} is out of range 0..65535")
        if self.mqtt_port is None and self.tls_port is None:
            raise ValueError("a broker needs a plain or a TLS listener")
        if self.max_queued_messages < 0:
            raise ValueError("max_queued_messages must be >= 0 (0: no limit)")
        if self.max_packet_size < 140_000:
            raise ValueError("max_packet_size must be at least 140000 to carry a 128 KiB block with its topic")


def find_mosquitto(explicit: str | None = None) -> str:
    """The mosquitto binary: ``explicit``, else on PATH, else /usr/sbin. Raises MosquittoNotFoundError."""
    if explicit is not None:
        if os.access(explicit, os.X_OK):
            return explicit
        raise MosquittoNotFoundError(f"mosquitto_path {explicit!r} is not an executable file")
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _FALLBACK_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoNotFoundError(
        "mosquitto is not installed: run `./run setup` or `apt-get install mosquitto` (it is not found on PATH "
        "nor in /usr/sbin)"
    )


def _check_conf_value(value: str) -> str:
    # mosquitto's config parser splits on spaces and has no quoting.
    if any(c.isspace() for c in value):
        raise ValueError(f"mosquitto cannot read a path or host with whitespace: {value!r}; choose another state_dir")
    return value


def render_config(
    config: BrokerConfig,
    *,
    mqtt_port: int | None,
    tls_port: int | None,
    tls_files: tuple[Path, Path, Path] | None,
    acl_path: Path,
    log_path: Path,
    run_as_root: bool,
    plugin: Path | None = None,
    socket_path: Path | None = None,
) -> str:
    """The text of mosquitto.conf for these concrete ports and files."""
    host = _check_conf_value(config.host)
    tls_host = _check_conf_value(config.tls_host or config.host)
    lines = [
        "# Generated by local_iot.broker; rewritten on every start.",
        # With the plugin: one global plugin (mosquitto 2.0 runs TICK callbacks only for global plugins) that lets
        # clients without a certificate (the plain listener) through and applies the device policy to the others.
        f"per_listener_settings {'false' if plugin is not None else 'true'}",
        "persistence false",
        f"log_dest file {_check_conf_value(str(log_path))}",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "set_tcp_nodelay true",
        f"max_queued_messages {config.max_queued_messages}",
        "max_queued_bytes 0",
        f"max_inflight_messages {config.max_inflight_messages}",
        f"max_packet_size {config.max_packet_size}",
    ]
    if run_as_root:
        lines.append("user root")
    if plugin is not None:
        lines += ["allow_anonymous true", f"plugin {_check_conf_value(str(plugin))}"]
        if config.registry is not None:
            lines.append(f"plugin_opt_registry {_check_conf_value(str(config.registry))}")
        lines.append(f"plugin_opt_allow {_check_conf_value(','.join(config.allow_topics))}")
    if mqtt_port is not None:
        lines += ["", f"listener {mqtt_port} {host}"]
    else:
        if socket_path is None:
            raise ValueError("without a plain port the broker needs a socket path")
        lines += ["", f"listener 0 {_check_conf_value(str(socket_path))}"]
    if plugin is None:
        lines.append("allow_anonymous true")
    if tls_port is not None and tls_files is not None:
        ca_cert, server_cert, server_key = (_check_conf_value(str(p)) for p in tls_files)
        lines += [
            "",
            f"listener {tls_port} {tls_host}",
            f"cafile {ca_cert}",
            f"certfile {server_cert}",
            f"keyfile {server_key}",
            "tls_version tlsv1.2",
            "require_certificate true",
        ]
        if plugin is None:
            lines += [
                "allow_anonymous false",
                "use_identity_as_username true",
                f"acl_file {_check_conf_value(str(acl_path))}",
            ]
    return "\n".join(lines) + "\n"


def render_acl() -> str:
    """The ACL of the TLS listener: each certificate (username = CN) may only use its own thing's stream topics."""
    return f"# Generated by local_iot.broker: the AWS device policy for streams.\n{DEVICE_ACL_PATTERN}\n"


class MosquittoBroker:
    """One mosquitto child process. Use as a context manager, or call start() and stop()."""

    def __init__(self, config: BrokerConfig) -> None:
        self._config = config
        self._state_dir = Path(config.state_dir).resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._mqtt_port: int | None = None
        self._tls_port: int | None = None
        self._ca: LocalCA | None = None
        self._tls_files: tuple[Path, Path, Path] | None = None
        self._plugin: Path | None = None
        self._binary: str | None = None
        self.restarts = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> MosquittoBroker:
        if self._proc is not None:
            raise BrokerUsageError("this broker is already started; stop() it first")
        binary = find_mosquitto(self._config.mosquitto_path)
        self._binary = binary
        private_dir(self._state_dir)
        if self._config.plugin and self._config.tls_port is not None:
            try:
                self._plugin = plugin_path()
            except PluginBuildError as exc:
                raise BrokerStartError(str(exc)) from exc
        self._prepare_tls()
        write_private(self.acl_path, render_acl())
        fixed = {p for p in (self._config.mqtt_port, self._config.tls_port) if p}
        for attempt in range(1, _START_ATTEMPTS + 1):
            mqtt_port, tls_port = self._choose_ports()
            try:
                self._launch(binary, mqtt_port, tls_port)
                return self
            except _PortInUse as e:
                if e.port in fixed or e.port is None:
                    what = f"port {e.port}" if e.port else "a port"
                    raise BrokerStartError(
                        f"{what} on {self.host} is already in use: choose another port or 0 for a free one",
                        log_tail=e.log_tail,
                    ) from None
                # A port we chose as free was taken before mosquitto bound it: choose again.
                log.info("mosquitto lost a race for port %d (attempt %d/%d)", e.port, attempt, _START_ATTEMPTS)
                if attempt == _START_ATTEMPTS:
                    raise BrokerStartError(
                        f"mosquitto could not bind free ports after {_START_ATTEMPTS} attempts", log_tail=e.log_tail
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def restart(self) -> None:
        """Start mosquitto again on the same ports and files after it died (or stop it first). A port taken in the
        meantime raises BrokerStartError."""
        if self._binary is None or (self._mqtt_port is None and self._tls_port is None):
            raise BrokerUsageError("restart() needs a broker that was started before")
        mqtt_port, tls_port = self._mqtt_port, self._tls_port
        self.stop()
        previous = self.log_path.with_suffix(".log.1")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.log_path, previous)
        try:
            self._launch(self._binary, mqtt_port, tls_port)
        except _PortInUse as e:
            raise BrokerStartError(
                f"port {e.port} on {self.host} was taken while the broker was down", log_tail=e.log_tail
            ) from None
        self.restarts += 1

    def exited(self) -> int | None:
        """The exit code when the mosquitto process ended (without stop()), else None."""
        return None if self._proc is None else self._proc.poll()

    def stop(self) -> None:
        """SIGTERM the mosquitto PID, wait, SIGKILL after ``stop_timeout``. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self._config.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "mosquitto pid %d ignored SIGTERM for %.1f s; killing it", proc.pid, self._config.stop_timeout
                )
                proc.kill()
                proc.wait()
        log.info("mosquitto pid %d stopped (exit code %s)", proc.pid, proc.returncode)

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._config.host

    @property
    def mqtt_port(self) -> int:
        if self._config.mqtt_port is None:
            raise BrokerUsageError(
                "this broker has no plain TCP port (BrokerConfig.mqtt_port is None): use socket_path"
            )
        return self._require(self._mqtt_port, "mqtt_port")

    @property
    def has_plugin(self) -> bool:
        """Whether mosquitto runs local_iot's plugin (known after start()): the device policy on the TLS
        listener, and Jobs answers delivered to the thing's client without a subscription."""
        return self._plugin is not None

    @property
    def has_plain_port(self) -> bool:
        return self._config.mqtt_port is not None

    @property
    def socket_path(self) -> Path:
        """The Unix socket of the plain listener when there is no plain TCP port."""
        return self._state_dir / SOCKET_NAME

    @property
    def tls_host(self) -> str:
        return self._config.tls_host or self._config.host

    @property
    def tls_port(self) -> int:
        if self._config.tls_port is None:
            raise BrokerUsageError("this broker runs no TLS listener (BrokerConfig.tls_port is None)")
        return self._require(self._tls_port, "tls_port")

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BrokerUsageError("the broker is not running: call start() first")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def config_path(self) -> Path:
        return self._state_dir / CONFIG_NAME

    @property
    def acl_path(self) -> Path:
        return self._state_dir / ACL_NAME

    @property
    def log_path(self) -> Path:
        return self._state_dir / LOG_NAME

    @property
    def ca_cert_path(self) -> Path:
        """The CA that signs (and verifies) certificates on the TLS listener."""
        if self._tls_files is None:
            raise BrokerUsageError("no TLS listener configured, or start() not called yet")
        return self._tls_files[0]

    @property
    def ca(self) -> LocalCA:
        """The local CA created in ``state_dir/ca`` (only when BrokerConfig gave no certificate paths)."""
        if self._ca is None:
            raise BrokerUsageError("no local CA: the broker was given its certificates, or start() was not called")
        return self._ca

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self._state_dir / STDERR_NAME, self.log_path):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            if text.strip():
                parts.append("\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    # -- internals -------------------------------------------------------------------------------------------

    def _require(self, value: int | None, name: str) -> int:
        if value is None or self._proc is None:
            raise BrokerUsageError(f"{name} is known only while the broker runs: call start() first")
        return value

    def _prepare_tls(self) -> None:
        c = self._config
        if c.tls_port is None:
            return
        if c.ca_cert is not None and c.server_cert is not None and c.server_key is not None:
            self._tls_files = (Path(c.ca_cert).resolve(), Path(c.server_cert).resolve(), Path(c.server_key).resolve())
            return
        ca_dir = private_dir(self._state_dir / "ca")
        self._ca = LocalCA.create(ca_dir)
        hosts = list(dict.fromkeys(["localhost", "127.0.0.1", c.host, c.tls_host or c.host]))
        server_cert, server_key = self._ca.issue_server_cert(ca_dir, hosts)
        self._tls_files = (self._ca.cert_path.resolve(), server_cert, server_key)

    def _choose_ports(self) -> tuple[int | None, int | None]:
        c = self._config
        plain = None if c.mqtt_port is None else (c.mqtt_port or free_ports(1, c.host)[0])
        tls_host = c.tls_host or c.host
        tls = None if c.tls_port is None else (c.tls_port or free_ports(1, tls_host)[0])
        if plain is not None and plain == tls:  # two hosts may hand out the same free port
            tls = free_ports(1, tls_host)[0] if not c.tls_port else tls
        return plain, tls

    def _launch(self, binary: str, mqtt_port: int | None, tls_port: int | None) -> None:
        if mqtt_port is None:
            self.socket_path.unlink(missing_ok=True)
        config_text = render_config(
            self._config,
            mqtt_port=mqtt_port,
            tls_port=tls_port,
            tls_files=self._tls_files,
            acl_path=self.acl_path,
            log_path=self.log_path,
            run_as_root=os.geteuid() == 0,
            plugin=self._plugin,
            socket_path=self.socket_path,
        )
        write_private(self.config_path, config_text)
        self.log_path.unlink(missing_ok=True)
        stderr_path = self._state_dir / STDERR_NAME
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as stderr:
            proc = subprocess.Popen(
                [binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                preexec_fn=_die_with_parent(os.getpid()),  # new session + PR_SET_PDEATHSIG(SIGKILL)
            )
        self._proc = proc
        _raise_open_files_limit(proc.pid)
        self._mqtt_port, self._tls_port = mqtt_port, tls_port
        ports = [(self.host, p) for p in (mqtt_port,) if p is not None]
        ports += [(self.tls_host, p) for p in (tls_port,) if p is not None]
        try:
            self._wait_ready(proc, ports)
        except BaseException:
            self.stop()
            raise
        log.info(
            "mosquitto pid %d running: plain %s:%s, tls %s:%s (state %s)",
            proc.pid,
            self.host,
            mqtt_port if mqtt_port is not None else self.socket_path,
            self.tls_host,
            tls_port,
            self._state_dir,
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes], ports: list[tuple[str, int]]) -> None:
        deadline = time.monotonic() + self._config.start_timeout
        logged_running = False
        pending = list(ports)
        while True:
            if proc.poll() is not None:
                tail = self.log_tail()
                if _IN_USE_MARKER in tail:
                    opened = _OPENING.findall(tail)  # the last listener it tried to open is the one that failed
                    raise _PortInUse(int(opened[-1]) if opened else None, log_tail=tail)
                raise BrokerStartError(f"mosquitto exited with code {proc.returncode} while starting", log_tail=tail)
            if not logged_running:
                logged_running = self._log_says_running()
            if logged_running:
                pending = [(h, p) for h, p in pending if not _accepts(h, p)]
                if not pending and (self._mqtt_port is not None or self.socket_path.exists()):
                    return
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"mosquitto did not accept connections on {[p for _, p in ports]} within "
                    f"{self._config.start_timeout} s",
                    log_tail=self.log_tail(),
                )
            with contextlib.suppress(subprocess.TimeoutExpired):  # wait a little, but wake at once if it exits
                proc.wait(timeout=_POLL_INTERVAL)

    def _log_says_running(self) -> bool:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False
        return any(line.rstrip().endswith(_READY_MARKER) for line in text.splitlines())


class _PortInUse(BrokerStartError):
    """mosquitto exited because ``port`` was taken (by a race after free_ports(), or it was never free)."""

    def __init__(self, port: int | None, *, log_tail: str) -> None:
        super().__init__(f"port {port} is in use", log_tail=log_tail)
        self.port = port


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: a new session (a Ctrl-C in the terminal does not race our stop()), and SIGKILL when the
    thread that started the child dies (PR_SET_PDEATHSIG), even when this process is SIGKILLed."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork
    prctl = libc.prctl

    def preexec() -> None:
        os.umask(0o077)  # mosquitto's own files (its log) are private whatever our umask
        os.setsid()
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl: do not outlive it
            os._exit(1)

    return preexec


def _raise_open_files_limit(pid: int) -> None:
    """Let mosquitto hold as many connections as the hard limit allows: it inherits our soft limit (often 1024),
    and past it every new device fails with a misleading 'connection closed during CONNECT'."""
    try:
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:  # not Linux, or not allowed: the broker runs with the inherited limit
        log.warning("could not raise mosquitto's open-files limit: %s (ulimit -n bounds the fleet size)", exc)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
