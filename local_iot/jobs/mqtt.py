"""``JobsService``: the Jobs device API on a real broker (paho-mqtt 2.x, MQTT 5), sharing the control plane's state.

How this works: one paho client connects to the broker's plain listener (or its Unix socket) and subscribes, with
*No Local*, to ``$aws/things/+/jobs/#`` (a ``+`` in the second level matches every thing; only a wildcard in the
first level would skip ``$`` topics). paho's network thread hands each publish to ``JobsBackend.handle`` and
publishes the answer and notifications at QoS 1, in order. Control-plane changes (create_job, cancel...) reach
devices through the sink this service registers on the backend. A timer thread calls ``JobsBackend.tick`` at the
core's next deadline (step timeouts, in-progress timeouts, rollout windows) and is woken after every change.

Answers reach the device that asked even when it did not subscribe to them, as on AWS IoT (AWS's OTA agent
never subscribes to ``$next/get/accepted``). mosquitto delivers only to subscribers, so with ``direct_replies``
(set when the broker runs local_iot's plugin) each ``accepted``/``rejected`` answer is published on the private
topic ``local-iot/jobs-reply/<thing>/<answer topic>`` instead: the plugin delivers it to the client whose id is
``<thing>`` (devices connect with client id = thing name) on the answer topic, subscribed or not, exactly once,
and drops the private message (the broker acknowledges it with "not authorized"; that is expected). Without the
plugin, answers go to the answer topic and reach subscribers only. Notifications (``notify``, ``notify-next``)
always go to their own topics, to subscribers, as on AWS.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .backend import JobsBackend, Wiring, jobs_backends, unwire, wire
from .core import JobsOutgoing

__all__ = ["JOBS_FILTER", "REPLY_PREFIX", "JobsService", "JobsServiceError", "reply_topic"]

log = logging.getLogger(__name__)

JOBS_FILTER = "$aws/things/+/jobs/#"
DEFAULT_CLIENT_ID = "local-iot-jobs-service"
#: Where the service publishes an answer for the broker plugin to deliver to the thing's client alone.
REPLY_PREFIX = "local-iot/jobs-reply/"
_THINGS = "$aws/things/"
_ANSWERS = ("/accepted", "/rejected")


def reply_topic(topic: str) -> str | None:
    """The private topic that carries the answer ``topic`` (``$aws/things/<thing>/jobs/.../accepted`` or
    ``/rejected``) to the plugin, ``local-iot/jobs-reply/<thing>/<topic>``; None for any other topic."""
    if not topic.startswith(_THINGS) or not topic.endswith(_ANSWERS):
        return None
    thing, sep, _ = topic[len(_THINGS) :].partition("/jobs/")
    if not sep or not thing or "/" in thing:
        return None
    return f"{REPLY_PREFIX}{thing}/{topic}"


class JobsServiceError(Exception):
    """The Jobs service could not connect or subscribe."""


class JobsService:
    """The Jobs MQTT API of ``backend`` on the broker at ``host:port`` (or ``socket_path``)."""

    def __init__(
        self,
        *,
        account_id: str,
        region: str,
        host: str = "127.0.0.1",
        port: int = 0,
        socket_path: str | None = None,
        clock: Callable[[], float] = time.time,
        minute: float = 60.0,
        on_change: Callable[[], None] | None = None,
        client_id: str = DEFAULT_CLIENT_ID,
        direct_replies: bool = False,
    ) -> None:
        self._account_id, self._region, self._minute = account_id, region, minute
        self._direct_replies = direct_replies
        self._wiring = Wiring(sink=self._publish, on_change=self._changed, minute=minute)
        self._host, self._port, self._socket_path = host, port, socket_path
        self._clock = clock
        self._on_change = on_change
        version, protocol = CallbackAPIVersion.VERSION2, MQTTProtocolVersion.MQTTv5
        if socket_path is not None:
            self._client = mqtt.Client(version, client_id=client_id, protocol=protocol, transport="unix")
        else:
            self._client = mqtt.Client(version, client_id=client_id, protocol=protocol)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_socket_open = self._nodelay
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._ready = threading.Event()
        self._failed: str | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._generation = 0  # changes seen; the timer re-reads the deadline when it moved
        self._timer: threading.Thread | None = None
        self._publish_lock = threading.Lock()
        self.handled = 0

    def _backend(self) -> JobsBackend:
        return jobs_backends[self._account_id][self._region]  # looked up each time: moto's reset replaces it

    @property
    def where(self) -> str:
        return self._socket_path or f"{self._host}:{self._port}"

    def start(self, timeout: float = 10.0) -> JobsService:
        wire(self._account_id, self._region, self._wiring)
        try:
            if self._socket_path is not None:
                self._client.connect(self._socket_path, keepalive=60, clean_start=True)
            else:
                self._client.connect(self._host, self._port, keepalive=60, clean_start=True)
        except OSError as exc:
            unwire(self._account_id, self._region, self._wiring)
            raise JobsServiceError(f"the Jobs service cannot connect to the broker at {self.where}: {exc}") from exc
        self._client.loop_start()
        if not self._ready.wait(timeout) or self._failed:
            reason = self._failed or f"no SUBACK within {timeout} s"
            self.stop()
            raise JobsServiceError(f"the Jobs service could not subscribe on {self.where}: {reason}")
        self._timer = threading.Thread(target=self._run_timer, name="local-iot-jobs-timer", daemon=True)
        self._timer.start()
        log.info("Jobs service ready on %s", self.where)
        return self

    def stop(self) -> None:
        with self._wake:
            if self._stopping:
                return
            self._stopping = True
            self._wake.notify_all()
        unwire(self._account_id, self._region, self._wiring)
        self._client.disconnect()
        self._client.loop_stop()
        if self._timer is not None:
            self._timer.join()

    def __enter__(self) -> JobsService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- paho callbacks ---------------------------------------------------------------------------------------

    @staticmethod
    def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            self._failed = f"CONNACK {reason}"
            self._ready.set()
            return
        client.subscribe([(JOBS_FILTER, SubscribeOptions(qos=1, noLocal=True))])

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._failed = f"SUBACK {failed} for {JOBS_FILTER}"
        self._ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            out = self._backend().handle(message.topic, bytes(message.payload), self._clock())
        except Exception:
            log.exception("Jobs service failed on %s", message.topic)
            return
        self.handled += 1
        self._publish(out)

    # -- publishing and time -----------------------------------------------------------------------------------

    def _publish(self, out: list[JobsOutgoing]) -> None:
        with self._publish_lock:
            for message in out:
                topic = (reply_topic(message.topic) if self._direct_replies else None) or message.topic
                self._client.publish(topic, message.payload, qos=1)

    def _changed(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()
        if self._on_change is not None:
            self._on_change()

    def _run_timer(self) -> None:
        while True:
            with self._wake:
                generation = self._generation
            deadline = self._backend().read(lambda core: core.next_deadline())
            with self._wake:
                if self._stopping:
                    return
                if generation != self._generation:
                    continue
                now = self._clock()
                if deadline is None or deadline > now:
                    self._wake.wait(None if deadline is None else min(deadline - now, 60.0))
                    continue
            try:
                self._backend().tick(self._clock())
            except Exception:
                log.exception("Jobs timer failed")
