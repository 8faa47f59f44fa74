"""The transport's lifecycle: states, inputs and the literal transition table (one choke point: ``transition``).

An input that is not in the table for a state is a usage error naming both. An awscrt event that does not apply in
a state (a reconnect failure while closing, a late stop confirmation) maps to None: ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from device_sim.transport.errors import TransportError, TransportUsageError


class TransportState(Enum):
    DISCONNECTED = "disconnected"  # created, connect() not called yet
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # the connection dropped; awscrt is reconnecting
    CLOSING = "closing"
    CLOSED = "closed"  # terminal: make a new transport to connect again


class Input(Enum):
    CONNECT = "connect()"
    CONNACK = "connection established"
    CONNECT_FAILED = "connect attempt failed"
    INTERRUPTED = "connection interrupted"
    RESUMED = "connection resumed"
    LOST = "connection lost for good"
    CLOSE = "close()"
    STOPPED = "client stopped"
    ABANDONED = "stop not awaited"  # a failed connect, or awscrt slower than close_timeout_s


_S, _I = TransportState, Input
#: (state, input) -> next state; None: the input is ignored in that state. A pair not listed is a usage error.
TRANSITIONS: dict[tuple[TransportState, Input], TransportState | None] = {
    (_S.DISCONNECTED, _I.CONNECT): _S.CONNECTING,
    (_S.DISCONNECTED, _I.CLOSE): _S.CLOSING,
    (_S.DISCONNECTED, _I.STOPPED): None,
    (_S.CONNECTING, _I.CONNACK): _S.CONNECTED,
    (_S.CONNECTING, _I.CONNECT_FAILED): None,  # connect() raises it and closes
    (_S.CONNECTING, _I.INTERRUPTED): None,  # likewise
    (_S.CONNECTING, _I.CLOSE): _S.CLOSING,
    (_S.CONNECTED, _I.INTERRUPTED): _S.RECONNECTING,
    (_S.CONNECTED, _I.LOST): _S.CLOSING,
    (_S.CONNECTED, _I.CONNACK): None,
    (_S.CONNECTED, _I.CONNECT_FAILED): None,
    (_S.CONNECTED, _I.CLOSE): _S.CLOSING,
    (_S.RECONNECTING, _I.CONNACK): None,  # reconnected; RESUMED follows once re-subscribed
    (_S.RECONNECTING, _I.RESUMED): _S.CONNECTED,
    (_S.RECONNECTING, _I.CONNECT_FAILED): None,  # one reconnect attempt failed; awscrt tries again
    (_S.RECONNECTING, _I.INTERRUPTED): None,  # dropped again while re-subscribing; awscrt reconnects again
    (_S.RECONNECTING, _I.LOST): _S.CLOSING,
    (_S.RECONNECTING, _I.CLOSE): _S.CLOSING,
    (_S.CLOSING, _I.STOPPED): _S.CLOSED,
    (_S.CLOSING, _I.ABANDONED): _S.CLOSED,
    **{(_S.CLOSING, i): None for i in (_I.CONNACK, _I.CONNECT_FAILED, _I.INTERRUPTED, _I.RESUMED, _I.LOST, _I.CLOSE)},
    **{(_S.CLOSED, i): None for i in Input if i is not _I.CONNECT},
}


def transition(state: TransportState, event: Input) -> TransportState | None:
    """The next state (None: ignored). TransportUsageError names the input and the state when not allowed."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        hint = "make a new MqttTransport to connect again" if state is _S.CLOSED else None
        raise TransportUsageError(
            f"{event.value} is not allowed while the transport is {state.value}", hint=hint
        ) from None


class ConnectionEventKind(Enum):
    INTERRUPTED = "interrupted"  # dropped; awscrt reconnects; pending operations failed with ConnectionLost
    RESUMED = "resumed"  # reconnected and re-subscribed
    LOST = "lost"  # dropped for good (reconnect off, or re-subscribing failed); the transport closes


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionEvent:
    kind: ConnectionEventKind
    error: TransportError | None = None
    session_present: bool = False
