"""Connection settings of the MQTT transport, validated once, like the AWS samples' command-line options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path

from device_sim.transport.errors import InvalidSettings

#: ALPN protocol AWS IoT Core expects for MQTT with X.509 client certificates on port 443.
AWS_MQTT_ALPN = "x-amzn-mqtt-ca"
TLS_PORT = 8883
PLAIN_PORT = 1883
ALPN_PORT = 443
#: AWS IoT Core accepts keepalive 30..1200 s (it raises a smaller value to 30 and lowers a larger one to 1200).
AWS_KEEPALIVE_RANGE = (30, 1200)
_MAX_CLIENT_ID_BYTES = 128


class MqttProtocol(Enum):
    MQTT5 = "mqtt5"
    MQTT311 = "mqtt311"


class FlowControl(Enum):
    """Client-side outbound flow control.

    ``AWS``: at most 100 publishes/s and 512 KiB/s out, as AWS IoT Core enforces per connection (what a real
    device gets with the awsiotsdk MQTT5 builder: ``AWS_IOT_CORE_DEFAULTS``). ``NONE``: no pacing.
    """

    AWS = "aws"
    NONE = "none"


class QoS(IntEnum):
    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportSettings:
    """Everything needed to open one MQTT connection.

    ``port`` defaults to 8883 with TLS and 1883 with ``no_tls``; ``alpn`` defaults to on exactly when the port is
    443 (AWS IoT's MQTT-over-443 with ALPN ``x-amzn-mqtt-ca``). With TLS, ``cert`` and ``key`` are required (mutual
    TLS) and ``ca`` is optional (the system trust store is used without it); with ``no_tls`` all three must be
    None. ``client_id`` is the thing name for AWS IoT (its policy allows ``iot:Connect`` on ``client/<thing>``).
    ``metrics`` False keeps awscrt from appending ``?SDK=...`` to the MQTT username.
    """

    endpoint: str
    client_id: str
    port: int | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    no_tls: bool = False
    protocol: MqttProtocol = MqttProtocol.MQTT5
    keepalive_s: int = 30
    alpn: bool | None = None
    flow_control: FlowControl = FlowControl.AWS
    qos: QoS = QoS.AT_MOST_ONCE
    connect_timeout_s: float = 10.0
    operation_timeout_s: float = 30.0
    #: awscrt reconnects by itself after a lost connection; False turns a lost connection into LOST and CLOSED.
    reconnect: bool = True
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    #: When a TLS connect has no answer after this long, probe the server certificate with Python's ssl module:
    #: awscrt (s2n) reports a certificate verification failure only after a 10-30 s "blinding" delay.
    tls_probe_after_s: float | None = 1.0
    #: How long ``close()`` waits for awscrt to confirm the client stopped before giving up on it.
    close_timeout_s: float = 5.0
    metrics: bool = False

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(os.fspath(value)))
        if self.port is None:
            object.__setattr__(self, "port", PLAIN_PORT if self.no_tls else TLS_PORT)
        if self.alpn is None:
            object.__setattr__(self, "alpn", not self.no_tls and self.port == ALPN_PORT)
        object.__setattr__(self, "protocol", MqttProtocol(self.protocol))
        object.__setattr__(self, "flow_control", FlowControl(self.flow_control))
        object.__setattr__(self, "qos", QoS(self.qos))
        self._validate()

    @property
    def tls(self) -> bool:
        return not self.no_tls

    @property
    def resolved_port(self) -> int:
        assert self.port is not None
        return self.port

    def _validate(self) -> None:
        if not self.endpoint:
            raise InvalidSettings("the endpoint is empty", hint="pass --endpoint HOST")
        if not 0 < self.resolved_port < 65536:
            raise InvalidSettings(f"port {self.port} is not a TCP port", hint="use 8883, 443 (ALPN) or 1883 (--no-tls)")
        if not self.client_id or len(self.client_id.encode()) > _MAX_CLIENT_ID_BYTES:
            raise InvalidSettings(
                f"client id {self.client_id!r} must be 1-{_MAX_CLIENT_ID_BYTES} bytes",
                hint="use the thing name as client id",
            )
        if not 1 <= self.keepalive_s <= 65535:
            raise InvalidSettings(
                f"keepalive {self.keepalive_s} s is not a valid MQTT keepalive",
                hint=f"AWS IoT Core accepts {AWS_KEEPALIVE_RANGE[0]}-{AWS_KEEPALIVE_RANGE[1]} s",
            )
        if self.no_tls:
            given = [n for n in ("cert", "key", "ca") if getattr(self, n) is not None]
            if given:
                raise InvalidSettings(
                    f"--no-tls with {', '.join('--' + n for n in given)}",
                    hint="drop --no-tls for mutual TLS, or drop the certificate options for plain TCP",
                )
            if self.alpn:
                raise InvalidSettings("ALPN needs TLS", hint="drop --no-tls or the ALPN option")
        elif self.cert is None or self.key is None:
            raise InvalidSettings(
                "mutual TLS needs a client certificate and its private key",
                hint="pass --cert and --key (and --ca for a private CA), or --no-tls for a plain local broker",
            )
        for name, value in (
            ("connect timeout", self.connect_timeout_s),
            ("operation timeout", self.operation_timeout_s),
        ):
            if value <= 0:
                raise InvalidSettings(f"{name} must be positive, got {value}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise InvalidSettings("reconnect delays must satisfy 0 < min <= max")
