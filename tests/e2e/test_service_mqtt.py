"""StreamService on a real mosquitto, with a raw paho client as the device (not our device code)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from local_iot.broker import BrokerConfig, MosquittoBroker
from local_iot.memory_catalog import InMemoryCatalog
from local_iot.service_mqtt import ServiceStartError, StreamService

pytestmark = pytest.mark.e2e

ROLE = "arn:aws:iam::123456789012:role/r"
DATA = (bytes(range(251)) * 400)[:100_000]  # 25 blocks of 4 KiB, the last one 1696 bytes
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(BrokerConfig(state_dir=tmp_path_factory.mktemp("broker"))) as running:
        yield running


@pytest.fixture
def catalog() -> InMemoryCatalog:
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    catalog.put_object("b", "fw.bin", DATA)
    catalog.create_stream("s1", [(0, "b", "fw.bin", None)], ROLE, "firmware")
    return catalog


class Device:
    """A raw MQTT 3.1.1 client whose client id is its thing name; received messages land in a queue."""

    def __init__(self, broker: MosquittoBroker, thing: str, fmt: str = "cbor", tls_dir: Path | None = None) -> None:
        self.thing, self.fmt = thing, fmt
        self.inbox: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
        self.disconnected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing, protocol=MQTTProtocolVersion.MQTTv311)
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, m.payload, time.monotonic()))
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_disconnect = lambda *args: self.disconnected.set()
        if tls_dir is None:
            self.client.connect(broker.host, broker.mqtt_port)
        else:  # mutual TLS, like a real device: certificate CN = thing name = client id
            paths = broker.ca.issue_device_files(tls_dir, thing)
            self.client.tls_set(str(broker.ca_cert_path), str(paths.cert_path), str(paths.key_path))
            self.client.connect("localhost", broker.tls_port)
        self.client.loop_start()
        prefix = f"$aws/things/{thing}/streams/s1"
        self.client.subscribe([(f"{prefix}/{op}/{fmt}", 0) for op in ("description", "data", "rejected")])
        if fmt == "cbor":  # InvalidTopic answers go to rejected/json
            self.client.subscribe(f"{prefix}/rejected/json", 0)
        assert subscribed.wait(TIMEOUT)

    def publish(self, op: str, doc: Any, fmt: str | None = None) -> float:
        fmt = fmt or self.fmt
        payload = doc if isinstance(doc, bytes) else cbor2.dumps(doc)
        sent = time.monotonic()
        self.client.publish(f"$aws/things/{self.thing}/streams/s1/{op}/{fmt}", payload, qos=0)
        return sent

    def receive(self) -> tuple[str, dict[str, Any], float]:
        topic, payload, at = self.inbox.get(timeout=TIMEOUT)
        return topic, (json.loads(payload) if topic.endswith("/json") else cbor2.loads(payload)), at

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device(broker: MosquittoBroker) -> Iterator[Device]:
    dev = Device(broker, "dev-1")
    yield dev
    dev.close()


def test_describe_get_and_reject(broker: MosquittoBroker, catalog: InMemoryCatalog, device: Device) -> None:
    with StreamService(catalog, host=broker.host, port=broker.mqtt_port) as service:
        assert service.ready
        device.publish("describe", {"c": "d"})
        topic, doc, _ = device.receive()
        assert topic.endswith("/description/cbor")
        assert doc == {"c": "d", "s": 1, "d": "firmware", "r": [{"f": 0, "z": len(DATA)}]}

        received = bytearray()
        for offset in range(0, 25, 8):
            n = min(8, 25 - offset)
            device.publish("get", {"f": 0, "l": 4096, "o": offset, "n": n})
            for k in range(n):
                topic, doc, _ = device.receive()
                assert topic.endswith("/data/cbor") and doc["i"] == offset + k  # in order over one connection
                received += doc["p"]
        assert bytes(received) == DATA

        device.publish("get", {"c": "bad", "f": 0, "l": 100, "n": 1})
        topic, doc, _ = device.receive()
        assert topic.endswith("/rejected/cbor")
        assert (doc["o"], doc["c"]) == ("BlockSizeOutOfBounds", "bad")

        device.publish("bogus", {"c": "x"}, fmt="json")
        topic, doc, _ = device.receive()
        assert topic == "$aws/things/dev-1/streams/s1/rejected/json" and doc["o"] == "InvalidTopic"

        device.publish("get", b"\xff\xfe garbage")
        assert device.receive()[1]["o"] == "InvalidCbor"
        device.publish("get", {"f": 0, "l": 4096, "o": 24, "n": 1})  # still serving
        assert device.receive()[1]["l"] == len(DATA) - 24 * 4096

        stats = service.stats().core
        assert stats.ignored_answers == 0  # No Local: our own answers never come back to us
        assert stats.data_messages == 26 and service.published == 26 + 4
    assert not service.ready


def test_json_device(broker: MosquittoBroker, catalog: InMemoryCatalog) -> None:
    dev = Device(broker, "dev-json", fmt="json")
    try:
        with StreamService(catalog, host=broker.host, port=broker.mqtt_port):
            dev.publish("get", b'{"c":"j","f":0,"l":4096,"o":1,"b":"0x05"}')
            docs = [json.loads(dev.inbox.get(timeout=TIMEOUT)[1]) for _ in range(2)]
            assert [(d["c"], d["i"]) for d in docs] == [("j", 1), ("j", 3)]
    finally:
        dev.close()


def test_latency_is_added_to_every_answer(broker: MosquittoBroker, catalog: InMemoryCatalog, device: Device) -> None:
    with StreamService(catalog, host=broker.host, port=broker.mqtt_port, latency_ms=200):
        sent = device.publish("get", {"f": 0, "l": 4096, "o": 0, "n": 4})
        arrivals = [device.receive() for _ in range(4)]
        assert [doc["i"] for _, doc, _ in arrivals] == [0, 1, 2, 3]
        assert all(at - sent >= 0.2 for _, _, at in arrivals)


def test_aws_quotas_pace_bytes_per_connection(
    broker: MosquittoBroker, catalog: InMemoryCatalog, device: Device
) -> None:
    catalog.put_object("b", "fw.bin", bytes(12 * 32768))
    catalog.update_stream("s1")
    with StreamService(catalog, host=broker.host, port=broker.mqtt_port, quotas="aws"):
        sent = device.publish("get", {"f": 0, "l": 32768, "o": 0, "n": 4})
        device.publish("get", {"f": 0, "l": 32768, "o": 4, "n": 4})
        device.publish("get", {"f": 0, "l": 32768, "o": 8, "n": 4})
        arrivals = [device.receive() for _ in range(12)]
    assert [doc["i"] for _, doc, _ in arrivals] == list(range(12))
    # 384 KiB at 512 KiB/s after a 128 KiB burst: the last block cannot arrive before 0.5 s
    elapsed = arrivals[-1][2] - sent
    assert elapsed >= 0.5
    blocks_per_second = (12 - 4) / (arrivals[-1][2] - arrivals[3][2])
    assert blocks_per_second <= 16.5  # 512 KiB/s of 32 KiB blocks


def test_fault_disconnect_kicks_the_device(broker: MosquittoBroker, catalog: InMemoryCatalog, device: Device) -> None:
    with StreamService(catalog, host=broker.host, port=broker.mqtt_port, faults="disconnect=after:8") as service:
        device.publish("get", {"f": 0, "l": 4096, "o": 0, "n": 8})
        assert [device.receive()[1]["i"] for _ in range(8)] == list(range(8))
        assert device.disconnected.wait(TIMEOUT)
        assert service.stats().faults.disconnects == 1


def test_fault_disconnect_kicks_a_device_on_the_tls_listener(
    broker: MosquittoBroker, catalog: InMemoryCatalog, tmp_path: Path
) -> None:
    # The kicker connects to the plain listener; mosquitto's client ids are broker-wide, so the TLS device goes.
    dev = Device(broker, "dev-tls", tls_dir=tmp_path)
    try:
        with StreamService(catalog, host=broker.host, port=broker.mqtt_port, faults="disconnect=after:3"):
            dev.publish("get", {"f": 0, "l": 4096, "o": 0, "n": 3})
            assert [dev.receive()[1]["i"] for _ in range(3)] == [0, 1, 2]
            assert dev.disconnected.wait(TIMEOUT)
    finally:
        dev.close()


def test_start_fails_cleanly_without_a_broker(catalog: InMemoryCatalog, tmp_path: Path) -> None:
    from local_iot.ports import free_port

    service = StreamService(catalog, host="127.0.0.1", port=free_port())
    with pytest.raises(ServiceStartError, match="cannot connect"):
        service.start(timeout=2.0)
    assert not service.ready
