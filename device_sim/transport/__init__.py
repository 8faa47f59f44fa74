"""MQTT transport over awscrt (layer 4 of device_sim): MQTT5 or 3.1.1, mutual TLS or plain TCP, asyncio API.

    settings = TransportSettings(endpoint="127.0.0.1", port=1883, no_tls=True, client_id="thing-1")
    async with MqttTransport(settings, on_message=handle) as mqtt:
        await mqtt.subscribe(filters)
        await mqtt.publish(topic, payload)

See docs/transport.md.
"""

from device_sim.transport._driver import LoopHop, MessageRuns
from device_sim.transport.base import Transport, TransportFactory
from device_sim.transport.client import MqttTransport
from device_sim.transport.crt import CrtResources, shared_crt_resources
from device_sim.transport.errors import (
    ConnectError,
    ConnectFailure,
    ConnectionLost,
    InvalidSettings,
    OperationTimeout,
    PublishError,
    SubscribeRejected,
    TransportClosed,
    TransportError,
    TransportUsageError,
)
from device_sim.transport.settings import AWS_MQTT_ALPN, FlowControl, MqttProtocol, QoS, TransportSettings
from device_sim.transport.state import (
    TRANSITIONS,
    ConnectionEvent,
    ConnectionEventKind,
    Input,
    TransportState,
    transition,
)

__all__ = [
    "AWS_MQTT_ALPN",
    "TRANSITIONS",
    "ConnectError",
    "ConnectFailure",
    "ConnectionEvent",
    "ConnectionEventKind",
    "ConnectionLost",
    "CrtResources",
    "FlowControl",
    "Input",
    "InvalidSettings",
    "LoopHop",
    "MessageRuns",
    "MqttProtocol",
    "MqttTransport",
    "OperationTimeout",
    "PublishError",
    "QoS",
    "SubscribeRejected",
    "Transport",
    "TransportClosed",
    "TransportError",
    "TransportFactory",
    "TransportSettings",
    "TransportState",
    "TransportUsageError",
    "shared_crt_resources",
    "transition",
]
