"""``StreamService``: the stream service on a real MQTT broker (paho-mqtt 2.x, MQTT 5, clean start).

How this works: one paho client connects to the broker's plain listener, sets TCP_NODELAY on its socket, and
subscribes (QoS 0, *No Local*) to ``$aws/things/+/streams/+/#``: that filter carries every request and every
malformed stream topic (so ``InvalidTopic`` can be answered), and *No Local* keeps our own answers from coming
back to us. paho's network thread (``loop_start``) calls ``on_message`` -> ``ServicePipeline.receive`` (the
sans-IO core plus quotas, faults and latency) and publishes the answers at QoS 0. Answers due now are published
right there, unless earlier answers are still waiting; answers due later (latency, quota pacing, fault delays)
go on a heap that a scheduler thread publishes when due, so answers to a request keep their order. The fault
``disconnect`` kicks a device by connecting a short-lived client with the device's client id (= its thing name,
as the AWS policy requires): the broker then drops the older connection. So that the device first gets the blocks
sent before the fault, the service publishes a *fence* on its own topic (subscribed without No Local) and kicks
when the fence comes back: the broker handles one connection's publishes in order, so by then it has forwarded
the blocks. ``ready`` is set after the SUBACK.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .catalog import Catalog
from .faults import FaultSpec, parse_faults
from .quotas import QuotaSettings, parse_quotas
from .service import Outgoing
from .service_pipeline import Action, PipelineStats, ServicePipeline, ServiceSettings

__all__ = ["SERVICE_FILTER", "ServiceError", "ServiceStartError", "StreamService"]

log = logging.getLogger(__name__)

#: The one subscription of the service: requests and malformed stream topics alike.
SERVICE_FILTER = "$aws/things/+/streams/+/#"
FENCE_PREFIX = "local-iot/stream-service/"
DEFAULT_CLIENT_ID = "local-iot-stream-service"


class ServiceError(Exception):
    """Base of the stream service adapter's errors."""


class ServiceStartError(ServiceError):
    """The service could not connect or subscribe; the message says to what and why."""


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StreamService:
    """The stream service as an MQTT client of ``host:port``. A context manager; or call start() and stop()."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        host: str = "127.0.0.1",
        port: int,
        latency_ms: float = 0.0,
        quotas: str | QuotaSettings | None = None,
        faults: str | FaultSpec | None = None,
        seed: int = 0,
        client_id: str = DEFAULT_CLIENT_ID,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
        socket_path: str | None = None,
    ) -> None:
        settings = ServiceSettings(
            latency_ms=latency_ms,
            quotas=parse_quotas(quotas) if quotas is None or isinstance(quotas, str) else quotas,
            faults=faults if isinstance(faults, FaultSpec) else parse_faults(faults),
            seed=seed,
        )
        self._pipeline = ServicePipeline(catalog, settings)
        self._host, self._port, self._keepalive = host, port, keepalive
        self._socket_path = socket_path  # a Unix socket listener instead of host:port (no plain TCP port)
        self._client_id = client_id
        self._client = self._new_client(client_id)
        # After a broker restart, reconnect within 1-2 s (paho's default backoff grows to 120 s).
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._subscriptions = 0
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_socket_open = _nodelay
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._ready = threading.Event()
        self._failed: str | None = None
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Action]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._scheduler: threading.Thread | None = None
        self._kickers: list[threading.Thread] = []
        self._published = 0
        self._fence = f"{FENCE_PREFIX}{client_id}/fence/"
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------------------------

    def _new_client(self, client_id: str) -> mqtt.Client:
        if self._socket_path is not None:
            return mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5, transport="unix"
            )
        return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)

    def _connect(self, client: mqtt.Client, keepalive: int) -> None:
        if self._socket_path is not None:
            client.connect(self._socket_path, keepalive=keepalive, clean_start=True)
        else:
            client.connect(self._host, self._port, keepalive=keepalive, clean_start=True)

    @property
    def where(self) -> str:
        return self._socket_path or f"{self._host}:{self._port}"

    def start(self, timeout: float = 10.0) -> StreamService:
        """Connect, subscribe, and return once the broker acknowledged the subscription."""
        if self._started:
            raise ServiceError("this StreamService was already started; create a new one")
        self._started = True
        self._scheduler = threading.Thread(target=self._run_scheduler, name="stream-service-scheduler", daemon=True)
        self._scheduler.start()
        try:
            self._connect(self._client, self._keepalive)
        except OSError as error:
            self.stop()
            raise ServiceStartError(f"cannot connect to the broker at {self.where}: {error}") from error
        self._client.loop_start()
        if not self._ready.wait(timeout) or self._failed:
            reason = self._failed or f"no SUBACK within {timeout} s"
            self.stop()
            raise ServiceStartError(f"the stream service could not subscribe on {self.where}: {reason}")
        log.info("stream service ready on %s (%s)", self.where, self._pipeline.settings)
        return self

    def stop(self) -> None:
        """Disconnect and stop both threads; answers not yet due are dropped (and logged). Idempotent."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            pending = len(self._heap)
            self._heap.clear()
            self._cond.notify_all()
        if pending:
            log.info("stream service stopped with %d answers not yet due", pending)
        self._ready.clear()
        self._client.disconnect()
        self._client.loop_stop()
        if self._scheduler is not None:
            self._scheduler.join()
        for kicker in self._kickers:
            kicker.join()

    def __enter__(self) -> StreamService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def ready(self) -> bool:
        """Connected and subscribed: requests published from now on are answered."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    @property
    def subscriptions(self) -> int:
        """How many times the service subscribed: 1 + the reconnects after a lost broker."""
        return self._subscriptions

    @property
    def published(self) -> int:
        """Messages published so far."""
        return self._published

    def stats(self) -> PipelineStats:
        """A snapshot of the counters (approximate while requests are being served)."""
        return self._pipeline.stats()

    # -- paho callbacks (paho's network thread) ---------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            self._failed = f"CONNACK {reason}"
            self._ready.set()
            return
        client.subscribe(
            [
                (SERVICE_FILTER, SubscribeOptions(qos=0, noLocal=True)),
                (self._fence + "+", SubscribeOptions(qos=0, noLocal=False)),
            ]
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._failed = f"SUBACK {failed} for {SERVICE_FILTER}"
        self._subscriptions += 1
        if self._subscriptions > 1 and not failed:
            log.warning("stream service reconnected to the broker and re-subscribed to %s", SERVICE_FILTER)
        self._ready.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._ready.clear()
        if not self._stopping:
            log.warning("stream service lost the broker (%s); reconnecting every 1-2 s", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        topic = message.topic
        if topic.startswith(self._fence):
            self._kick(topic[len(self._fence) :])
            return
        payload = message.payload
        actions = self._pipeline.receive(topic, payload if type(payload) is bytes else bytes(payload), now)
        if actions:
            self._dispatch(actions, now)

    # -- publishing -------------------------------------------------------------------------------------------

    def _dispatch(self, actions: Sequence[Action], now: float) -> None:
        with self._cond:
            if not self._heap and all(a.due <= now for a in actions):
                publish = self._client.publish
                for action in actions:
                    if isinstance(action, Outgoing):
                        publish(action.topic, action.payload, 0)
                        self._published += 1
                    else:
                        publish(self._fence + action.thing_name, b"", 0)
                return
            for action in actions:
                heapq.heappush(self._heap, (action.due, next(self._seq), action))
            self._cond.notify()

    def _run_scheduler(self) -> None:
        with self._cond:
            while not self._stopping:
                if not self._heap:
                    self._cond.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                while self._heap and self._heap[0][0] <= time.monotonic():
                    action = heapq.heappop(self._heap)[2]
                    if isinstance(action, Outgoing):
                        self._client.publish(action.topic, action.payload, 0)
                        self._published += 1
                    else:
                        self._client.publish(self._fence + action.thing_name, b"", 0)

    def _kick(self, thing_name: str) -> None:
        thread = threading.Thread(target=self._kick_now, args=(thing_name,), name="stream-service-kick")
        with self._cond:
            if self._stopping:
                return
            self._kickers = [k for k in self._kickers if k.is_alive()]
            self._kickers.append(thread)
        thread.start()

    def _kick_now(self, thing_name: str) -> None:
        """Connect with the device's client id: the broker drops the device's connection (MQTT session takeover)."""
        kicker = self._new_client(thing_name)
        connected = threading.Event()
        kicker.on_connect = lambda *args: connected.set()
        try:
            self._connect(kicker, 10)
            kicker.loop_start()
            if not connected.wait(5.0):
                log.warning("fault disconnect: no CONNACK while kicking %s", thing_name)
            kicker.disconnect()
            kicker.loop_stop()
            log.info("fault disconnect: kicked the client %s", thing_name)
        except OSError as error:
            log.warning("fault disconnect: could not kick %s: %s", thing_name, error)
