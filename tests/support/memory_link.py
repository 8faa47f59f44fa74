"""An in-memory MQTT link between devices and the emulator's stream service core: no broker, no sockets.

``MemoryLink(core)`` plays the broker: a device's transport (``link.factory``, a ``TransportFactory``) publishes
requests, the link hands them to ``StreamServiceCore.handle`` and delivers every answer to the transports
subscribed to its exact topic, in order, each on its own event-loop turn (as awscrt's callbacks hop into the
loop). Faults are explicit and deterministic: ``drop_answers`` removes chosen answers, ``interrupt`` cuts the
connection (answers still in transit are lost, INTERRUPTED then RESUMED are reported), and ``refuse`` makes
SUBACK refuse filters. Everything published is recorded in ``published`` for assertions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from device_sim.transport import (
    ConnectionEvent,
    ConnectionEventKind,
    ConnectionLost,
    CrtResources,
    MessageRuns,
    QoS,
    SubscribeRejected,
    TransportClosed,
    TransportError,
    TransportSettings,
)
from local_iot.service import Outgoing, StreamServiceCore

__all__ = ["RECONNECT_S", "MemoryLink", "MemoryTransport"]

#: How long a simulated reconnect takes.
RECONNECT_S = 0.01


@dataclass
class MemoryLink:
    core: StreamServiceCore
    #: answers for which this returns True are dropped (lost in transit)
    drop_answers: Callable[[Outgoing], bool] = lambda _out: False
    #: filters the "broker" refuses in the SUBACK (filter -> reason code)
    refuse: dict[str, int] = field(default_factory=dict)
    published: list[tuple[str, str, bytes]] = field(default_factory=list)  # (client id, topic, payload)
    delivered: list[tuple[str, str]] = field(default_factory=list)  # (client id, topic)
    transports: list[MemoryTransport] = field(default_factory=list)
    #: called (in the loop) after each request the service answered, with that request's topic
    after_request: Callable[[str], None] | None = None
    #: deliver the answers of one request together, as one run (``MessageRuns.many``), as awscrt's thread hands a
    #: socket's messages over; otherwise each on its own loop turn
    runs: bool = False

    def factory(
        self,
        settings: TransportSettings,
        *,
        on_message: Callable[[str, bytes], None],
        on_connection_event: Callable[[ConnectionEvent], None] | None = None,
        resources: CrtResources | None = None,
    ) -> MemoryTransport:
        transport = MemoryTransport(self, settings.client_id, on_message, on_connection_event)
        self.transports.append(transport)
        return transport

    def requests(self, operation: str) -> list[bytes]:
        """Payloads of the device requests published on ``.../<operation>/<fmt>``."""
        return [p for _, topic, p in self.published if topic.rsplit("/", 2)[-2] == operation]

    def _route(self, client_id: str, topic: str, payload: bytes) -> None:
        self.published.append((client_id, topic, payload))
        if topic.rsplit("/", 2)[-2] not in ("describe", "get"):
            return
        loop = asyncio.get_running_loop()
        together: dict[int, list[tuple[str, bytes]]] = {}
        for out in self.core.handle(topic, payload, client_id, loop.time()):
            if self.drop_answers(out):
                continue
            for i, transport in enumerate(self.transports):
                if out.topic in transport.subscriptions:
                    if self.runs:
                        together.setdefault(i, []).append((out.topic, out.payload))
                    else:
                        transport.deliver_soon(out.topic, out.payload)
        for i, messages in together.items():
            self.transports[i].deliver_run_soon(messages)
        if self.after_request is not None:
            self.after_request(topic)


class MemoryTransport:
    """One device's end of a ``MemoryLink``; satisfies ``device_sim.transport.Transport``."""

    def __init__(
        self,
        link: MemoryLink,
        client_id: str,
        on_message: Callable[[str, bytes], None],
        on_event: Callable[[ConnectionEvent], None] | None,
    ) -> None:
        self._link = link
        self.client_id = client_id
        self._on_message = on_message
        self._on_event = on_event
        self.subscriptions: set[str] = set()
        self.connected = False
        self.closed = False
        self._epoch = 0  # bumped by interrupt(): deliveries scheduled before it are lost

    async def connect(self) -> None:
        self.connected = True

    async def subscribe(self, filters: Sequence[str], qos: QoS | int | None = None) -> list[int]:
        refused = {f: self._link.refuse[f] for f in filters if f in self._link.refuse}
        if refused:
            raise SubscribeRejected(refused)
        self.subscriptions.update(filters)
        return [int(qos or 0)] * len(filters)

    async def publish(self, topic: str, payload: bytes, qos: QoS | int | None = None) -> None:
        self._check()
        self._link._route(self.client_id, topic, payload)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        qos: QoS | int | None = None,
        *,
        on_done: Callable[[TransportError | None], None] | None = None,
    ) -> None:
        self._check()
        self._link._route(self.client_id, topic, payload)
        if on_done is not None:
            asyncio.get_running_loop().call_soon(on_done, None)

    async def close(self) -> None:
        self.connected = False
        self.closed = True

    def deliver_soon(self, topic: str, payload: bytes) -> None:
        asyncio.get_running_loop().call_soon(self._deliver, self._epoch, topic, payload)

    def deliver_run_soon(self, messages: list[tuple[str, bytes]]) -> None:
        asyncio.get_running_loop().call_soon(self._deliver_run, self._epoch, messages)

    def interrupt(self) -> None:
        """The connection drops and comes back: what was in transit is lost; INTERRUPTED, then RESUMED."""
        self._epoch += 1
        self.connected = False
        if self._on_event is not None:
            self._on_event(ConnectionEvent(kind=ConnectionEventKind.INTERRUPTED, error=ConnectionLost("cut")))
        # awscrt reconnects after at least its minimum back-off: RESUMED comes after every callback already queued
        # (e.g. the outcome of the publish that was just written), never in the same loop turn.
        asyncio.get_running_loop().call_later(RECONNECT_S, self._resume)

    def _resume(self) -> None:
        self.connected = True
        if self._on_event is not None:
            self._on_event(ConnectionEvent(kind=ConnectionEventKind.RESUMED, session_present=True))

    def _deliver(self, epoch: int, topic: str, payload: bytes) -> None:
        if epoch != self._epoch or not self.connected or self.closed:
            return
        self._link.delivered.append((self.client_id, topic))
        self._on_message(topic, payload)

    def _deliver_run(self, epoch: int, messages: list[tuple[str, bytes]]) -> None:
        if epoch != self._epoch or not self.connected or self.closed:
            return
        self._link.delivered.extend((self.client_id, topic) for topic, _ in messages)
        if isinstance(self._on_message, MessageRuns):
            self._on_message.many(messages)
        else:
            for topic, payload in messages:
                self._on_message(topic, payload)

    def _check(self) -> None:
        if self.closed:
            raise TransportClosed("closed")
        if not self.connected:
            raise ConnectionLost("not connected")
