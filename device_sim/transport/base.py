"""The transport as the device sees it: a ``typing.Protocol``, so a device runs on MQTT or on an in-memory link.

``MqttTransport`` (awscrt) satisfies it; tests and simulations pass another ``TransportFactory`` to ``Device``.
Callbacks run in the event loop: ``on_message(topic, payload)`` for every message on a subscribed topic, and
``on_connection_event(event)`` for INTERRUPTED / RESUMED / LOST.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from device_sim.transport.crt import CrtResources
from device_sim.transport.errors import TransportError
from device_sim.transport.settings import QoS, TransportSettings
from device_sim.transport.state import ConnectionEvent

__all__ = ["Transport", "TransportFactory"]


class Transport(Protocol):
    """One connection: connect, subscribe, publish (awaited or not), close. Errors are ``TransportError``s."""

    async def connect(self) -> None: ...

    async def subscribe(self, filters: Sequence[str], qos: QoS | int | None = None) -> list[int]: ...

    async def publish(self, topic: str, payload: bytes, qos: QoS | int | None = None) -> None: ...

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        qos: QoS | int | None = None,
        *,
        on_done: Callable[[TransportError | None], None] | None = None,
    ) -> None: ...

    async def close(self) -> None: ...


class TransportFactory(Protocol):
    """Makes a device's transport; ``MqttTransport`` itself is one."""

    def __call__(
        self,
        settings: TransportSettings,
        *,
        on_message: Callable[[str, bytes], None],
        on_connection_event: Callable[[ConnectionEvent], None] | None = None,
        resources: CrtResources | None = None,
    ) -> Transport: ...
