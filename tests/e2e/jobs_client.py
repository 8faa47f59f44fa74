"""A raw Jobs test device: paho-mqtt on local_iot's mutual-TLS listener, none of device_sim's code.

``JobsDevice(iot, thing, paths)`` connects as ``thing`` with its certificate, subscribes to the thing's Jobs topics
(``$aws/things/<thing>/jobs/#``: answers and notifications) and puts every delivered message in a queue.
``request(suffix, body)`` publishes hand-built JSON on ``$aws/things/<thing>/jobs/<suffix>`` and waits for that
topic's ``/accepted`` or ``/rejected``; ``next_message(topic)`` waits for a notification. Nothing sleeps: every wait
is a queue get with a timeout; messages on other topics seen meanwhile are kept for later waits.
"""

from __future__ import annotations

import json
import queue
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from local_iot.ca import CertPaths
from local_iot.runner import LocalIot

TIMEOUT = 10.0


class JobsDevice:
    def __init__(self, iot: LocalIot, thing: str, paths: CertPaths) -> None:
        self.thing = thing
        self.prefix = f"$aws/things/{thing}/jobs/"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing, protocol=MQTTProtocolVersion.MQTTv5)
        self._connacks: queue.Queue[Any] = queue.Queue()
        self._subacks: queue.Queue[list[Any]] = queue.Queue()
        self._messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._seen: list[tuple[str, bytes]] = []
        self.client.on_connect = lambda c, u, f, rc, p: self._connacks.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subacks.put(list(rcs))
        self.client.on_message = lambda c, u, m: self._messages.put((m.topic, bytes(m.payload)))
        self.client.tls_set(ca_certs=iot.info["ca_cert"], certfile=str(paths.cert_path), keyfile=str(paths.key_path))
        self.client.connect("localhost", iot.info["tls_port"])
        self.client.loop_start()
        connack = self._connacks.get(timeout=TIMEOUT)
        assert not connack.is_failure, connack
        self.client.subscribe(self.prefix + "#", qos=1)
        codes = self._subacks.get(timeout=TIMEOUT)
        assert not any(rc.is_failure for rc in codes), codes

    def publish(self, suffix: str, body: Any) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.client.publish(self.prefix + suffix, payload, qos=1)

    def request(self, suffix: str, body: Any) -> tuple[str, dict[str, Any]]:
        """Publish and wait for ``accepted`` or ``rejected`` of that topic."""
        self.publish(suffix, body)
        topic, payload = self.next_message(
            self.prefix + suffix + "/accepted", self.prefix + suffix + "/rejected", keep_others=True
        )
        return topic.rsplit("/", 1)[1], json.loads(payload)

    def notification(self, name: str) -> dict[str, Any]:
        """The next ``notify`` or ``notify-next`` message."""
        return json.loads(self.next_message(self.prefix + name)[1])

    def next_message(self, *topics: str, keep_others: bool = True, timeout: float = TIMEOUT) -> tuple[str, bytes]:
        for index, (topic, payload) in enumerate(self._seen):
            if topic in topics:
                del self._seen[index]
                return topic, payload
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.thing}: nothing on {topics} within {timeout} s; seen {self._seen}")
            try:
                topic, payload = self._messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if topic in topics:
                return topic, payload
            if keep_others:
                self._seen.append((topic, payload))

    def drain(self) -> None:
        """Forget notifications received so far (those already delivered)."""
        self._seen.clear()
        while True:
            try:
                self._messages.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
