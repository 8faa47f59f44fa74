"""Errors of the MQTT transport, and the one place where awscrt/OSError exceptions become them.

``TransportError`` is the base; every error carries a ``hint`` that says what to do. ``TransportUsageError`` and
its subclasses mean the caller did it (bad settings, an operation in the wrong state); the others mean the network,
the TLS peer or the broker did it. ``translate()`` is the boundary: the transport calls it (through
``foreign_errors``) wherever it touches awscrt, and nowhere else is a foreign exception inspected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import Enum, StrEnum

from awscrt.exceptions import AwsCrtError  # type: ignore[import-untyped]
from awscrt.mqtt import SubscribeError as Crt311SubscribeError  # type: ignore[import-untyped]


class Op(StrEnum):
    """What the transport was doing when something failed."""

    SETUP = "setup"
    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    CLOSE = "close"


class ConnectFailure(Enum):
    DNS = "dns"  # the endpoint name does not resolve
    UNREACHABLE = "unreachable"  # TCP: refused, no route, timeout
    TLS = "tls"  # the handshake failed (certificates, CA, host name)
    REFUSED = "refused"  # the broker answered CONNACK with a failure code
    CLOSED_BY_BROKER = "closed_by_broker"  # the broker hung up during CONNECT (AWS IoT's policy denial)
    TIMEOUT = "timeout"  # no CONNACK in time
    OTHER = "other"


class TransportError(Exception):
    """Base of every transport error."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class TransportUsageError(TransportError):
    """The caller did something the transport does not allow."""


class InvalidSettings(TransportUsageError):
    """Settings that cannot work (missing certificate, unreadable key, out-of-range values)."""


class TransportClosed(TransportUsageError):
    """The transport was closed by this process (before or while the operation ran)."""


class ConnectError(TransportError):
    """The connection could not be established. ``kind`` says which layer failed."""

    def __init__(self, message: str, *, kind: ConnectFailure, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


class SubscribeRejected(TransportError):
    """The broker answered SUBACK with a failure code for some filters: ``rejected`` maps filter -> code."""

    def __init__(self, rejected: dict[str, int], *, hint: str | None = None) -> None:
        listed = ", ".join(f"{f} (0x{code:02x})" for f, code in rejected.items())
        super().__init__(f"the broker rejected the subscription to {listed}", hint=hint or _SUBSCRIBE_HINT)
        self.rejected = rejected


class PublishError(TransportError):
    """A publish failed (a PUBACK with a failure code, or the client could not send it)."""

    def __init__(self, message: str, *, reason_code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason_code = reason_code


class ConnectionLost(TransportError):
    """The connection dropped while the operation was pending, or it is down right now (reconnecting)."""


class OperationTimeout(TransportError):
    """No answer within the transport's timeout."""


class BrokerRefusal(Exception):
    """A CONNACK failure code as the drivers report it (MQTT5 reason code or MQTT 3.1.1 return code)."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(f"{name} (0x{code:02x})")
        self.name = name
        self.code = code


_SUBSCRIBE_HINT = (
    "the policy must allow iot:Subscribe on topicfilter/$aws/things/<thing>/streams/* for this thing "
    "(locally: the broker ACL lets a certificate use only its own thing's topics)"
)
_PORT_HINT = "check --endpoint and --port (8883 for mutual TLS, 443 with ALPN, 1883 for a plain local broker)"
_TLS_HINT = (
    "check that --ca is the CA that signed the server certificate (AmazonRootCA1.pem for AWS IoT), that --endpoint "
    "is a name in the server certificate, that --cert/--key are a pair, and that the port speaks TLS"
)
_CLIENT_CERT_HINT = (
    "the server ended the TLS handshake: it does not accept the client certificate; check that --cert was issued "
    "by a CA the broker trusts (AWS IoT: registered and ACTIVE), that --key belongs to it, and that the port speaks TLS"
)
_HANGUP_HINT = (
    "the broker closed the connection during CONNECT: AWS IoT does that when the policy does not allow iot:Connect "
    "on client/<client id>, when the certificate is inactive or not attached to the thing, or when the client id is "
    "malformed"
)
_DISCONNECTED = {
    "AWS_ERROR_MQTT_NOT_CONNECTED",
    "AWS_ERROR_MQTT_CONNECTION_DESTROYED",
    "AWS_ERROR_MQTT_CONNECTION_DISCONNECTING",
    "AWS_ERROR_MQTT_CONNECTION_SHUTDOWN",
    "AWS_ERROR_MQTT_CANCELLED_FOR_CLEAN_SESSION",
    "AWS_ERROR_MQTT_UNEXPECTED_HANGUP",
    "AWS_ERROR_MQTT5_OPERATION_FAILED_DUE_TO_OFFLINE_QUEUE_POLICY",
    "AWS_ERROR_MQTT5_USER_REQUESTED_STOP",
    "AWS_ERROR_MQTT5_CLIENT_TERMINATED",
    "AWS_ERROR_MQTT5_DISCONNECT_RECEIVED",
    "AWS_IO_SOCKET_CLOSED",
    "AWS_IO_SOCKET_NOT_CONNECTED",
}
_VALIDATION = {
    "AWS_ERROR_MQTT5_PUBLISH_OPTIONS_VALIDATION",
    "AWS_ERROR_MQTT5_SUBSCRIBE_OPTIONS_VALIDATION",
    "AWS_ERROR_MQTT5_PACKET_VALIDATION",
    "AWS_ERROR_MQTT_INVALID_TOPIC",
    "AWS_ERROR_MQTT_INVALID_QOS",
    "AWS_ERROR_MQTT_BUFFER_TOO_BIG",
}
_REFUSAL_HINTS = {
    "NOT_AUTHORIZED": "the policy must allow iot:Connect on client/<client id> (use the thing name as client id)",
    "BAD_USERNAME_OR_PASSWORD": "the broker rejected the credentials",
    "CLIENT_IDENTIFIER_NOT_VALID": "use a client id of 1-128 bytes (the thing name)",
    "IDENTIFIER_REJECTED": "use a client id of 1-128 bytes (the thing name)",
    "SERVER_UNAVAILABLE": "the broker is overloaded or starting; try again later",
    "SERVER_BUSY": "the broker is overloaded; try again later",
    "QUOTA_EXCEEDED": "too many connects: pace them (AWS: 500/s per account, 1/s per client id)",
    "CONNECTION_RATE_EXCEEDED": "too many connects: pace them (AWS: 500/s per account, 1/s per client id)",
}


def _connect_error(exc: AwsCrtError, where: str) -> ConnectError:
    name = exc.name
    if name.startswith("AWS_IO_DNS"):
        return ConnectError(
            f"cannot resolve {where}: {name}",
            kind=ConnectFailure.DNS,
            hint="check --endpoint (AWS: `aws iot describe-endpoint --endpoint-type iot:Data-ATS`)",
        )
    if name in {
        "AWS_IO_SOCKET_CONNECTION_REFUSED",
        "AWS_IO_SOCKET_NO_ROUTE_TO_HOST",
        "AWS_IO_SOCKET_NETWORK_DOWN",
        "AWS_IO_SOCKET_TIMEOUT",
        "AWS_IO_SOCKET_CONNECT_ABORTED",
        "AWS_IO_SOCKET_INVALID_ADDRESS",
    }:
        return ConnectError(
            f"nothing accepts connections at {where}: {name}", kind=ConnectFailure.UNREACHABLE, hint=_PORT_HINT
        )
    if name in {"AWS_IO_TLS_ERROR_READ_FAILURE", "AWS_IO_TLS_ERROR_ALERT_RECEIVED", "AWS_IO_TLS_CLOSED_ABORT"}:
        return ConnectError(
            f"TLS handshake with {where} failed: {name}", kind=ConnectFailure.TLS, hint=_CLIENT_CERT_HINT
        )
    if name.startswith("AWS_IO_TLS") or name == "AWS_ERROR_PEM_MALFORMED":
        return ConnectError(f"TLS handshake with {where} failed: {name}", kind=ConnectFailure.TLS, hint=_TLS_HINT)
    if name in {"AWS_ERROR_MQTT_UNEXPECTED_HANGUP", "AWS_IO_SOCKET_CLOSED", "AWS_ERROR_MQTT5_DISCONNECT_RECEIVED"}:
        return ConnectError(
            f"{where} closed the connection during CONNECT: {name}",
            kind=ConnectFailure.CLOSED_BY_BROKER,
            hint=_HANGUP_HINT,
        )
    if name in {"AWS_ERROR_MQTT5_CONNACK_TIMEOUT", "AWS_ERROR_MQTT_TIMEOUT"}:
        return ConnectError(f"no CONNACK from {where}: {name}", kind=ConnectFailure.TIMEOUT, hint=_PORT_HINT)
    return ConnectError(f"cannot connect to {where}: {name}: {exc.message}", kind=ConnectFailure.OTHER)


def translate(op: Op, exc: BaseException, *, where: str) -> TransportError | None:
    """The TransportError for a foreign exception raised while doing ``op`` against ``where`` (host:port).

    None for an exception this boundary does not know (a bug in our code must surface as itself).
    """
    if isinstance(exc, TransportError):
        return exc
    if op is Op.SETUP:
        # awscrt reports unreadable PEM as a bare RuntimeError("34 (AWS_ERROR_INVALID_ARGUMENT): ...").
        if isinstance(exc, AwsCrtError | OSError) or (isinstance(exc, RuntimeError) and "(AWS_" in str(exc)):
            return InvalidSettings(
                f"cannot load the TLS files: {exc}",
                hint="check that --cert, --key and --ca are readable PEM files and that --key belongs to --cert",
            )
        return None
    if isinstance(exc, BrokerRefusal):
        hint = _REFUSAL_HINTS.get(exc.name, "see the broker's log for the reason")
        return ConnectError(f"{where} refused the connection: {exc}", kind=ConnectFailure.REFUSED, hint=hint)
    if isinstance(exc, Crt311SubscribeError):
        return SubscribeRejected({str(exc.args[0]) if exc.args else "?": 0x80})
    if isinstance(exc, AwsCrtError):
        if op is Op.CONNECT:
            return _connect_error(exc, where)
        if exc.name in _DISCONNECTED:
            return ConnectionLost(
                f"{op} failed: the connection to {where} is down ({exc.name})",
                hint="wait for the RESUMED connection event and try again",
            )
        if exc.name in _VALIDATION:
            return TransportUsageError(
                f"{op} refused by the client's checks: {exc.name}",
                hint="AWS IoT limits: topics <= 256 bytes and 7 slashes, <= 8 filters per SUBSCRIBE, payload <= 128 KB",
            )
        if exc.name == "AWS_ERROR_MQTT_TIMEOUT":
            return OperationTimeout(f"{op} got no acknowledgement from {where}")
        if op is Op.PUBLISH:
            return PublishError(f"publish failed: {exc}")
        return TransportError(f"{op} failed: {exc}")
    if isinstance(exc, OSError):
        return (
            ConnectionLost(f"{op} failed: {exc}")
            if op is not Op.CONNECT
            else ConnectError(f"cannot connect to {where}: {exc}", kind=ConnectFailure.OTHER, hint=_PORT_HINT)
        )
    return None


def connection_lost(exc: BaseException, *, where: str) -> ConnectionLost:
    """ConnectionLost for the error awscrt reported when an established connection dropped."""
    lost = ConnectionLost(
        f"the connection to {where} was lost ({exc})",
        hint="pending operations failed; wait for the RESUMED connection event and ask again",
    )
    lost.__cause__ = exc
    return lost


@contextlib.contextmanager
def foreign_errors(op: Op, *, where: str) -> Iterator[None]:
    """Run a block that touches awscrt; foreign exceptions leave it as TransportErrors (``raise ... from``)."""
    try:
        yield
    except Exception as exc:
        translated = translate(op, exc, where=where)
        if translated is None or translated is exc:
            raise
        raise translated from exc
