"""The private mosquitto: lifecycle, plain and mutual-TLS listeners, the per-thing ACL, floods, and awscrt mTLS.

Negative delivery ("B's message never reaches A") is proven with a marker: after the forbidden message, the same
publisher sends a marker on a topic the receiver may use. Messages of one publisher reach one subscriber in order,
so once the marker has arrived, the forbidden message would have arrived before it.
"""

from __future__ import annotations

import os
import queue
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from local_iot.broker import BrokerConfig, BrokerStartError, MosquittoBroker, MosquittoNotFoundError
from local_iot.ca import CertPaths, LocalCA

TIMEOUT = 10.0
SYSTEM_BROKER_PORT = 1883


@dataclass(frozen=True, kw_only=True, slots=True)
class Received:
    topic: str
    payload: bytes


class Client:
    """A paho client on its own network thread; callbacks only hand data to queues and events."""

    def __init__(
        self,
        broker: MosquittoBroker,
        client_id: str,
        *,
        device: CertPaths | None = None,
        nodelay: bool = False,
    ) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connack: queue.Queue[ReasonCode] = queue.Queue()
        self._subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.disconnects: queue.Queue[ReasonCode] = queue.Queue()
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.client.on_connect = lambda c, u, flags, rc, props: self._connack.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self._subacks.put(list(rcs))
        self.client.on_message = lambda c, u, msg: self.messages.put(Received(topic=msg.topic, payload=msg.payload))
        port = broker.mqtt_port
        if device is not None:
            self.client.tls_set(
                ca_certs=str(broker.ca_cert_path), certfile=str(device.cert_path), keyfile=str(device.key_path)
            )
            port = broker.tls_port
        self.client.connect(broker.host, port, keepalive=60)
        if nodelay:
            sock = self.client.socket()
            assert isinstance(sock, socket.socket | ssl.SSLSocket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        rc = self._connack.get(timeout=TIMEOUT)
        if rc.is_failure:
            self.close()
            raise ConnectionError(f"CONNACK {rc}")

    def subscribe(self, *filters: str) -> list[ReasonCode]:
        self.client.subscribe([(f, 0) for f in filters])
        return self._subacks.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        return info

    def until(self, topic: str, payload: bytes) -> list[Received]:
        """Everything received up to and including the message (topic, payload); fails after TIMEOUT."""
        got: list[Received] = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {payload!r} on {topic} within {TIMEOUT} s; got {got}")
            try:
                message = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            got.append(message)
            if message == Received(topic=topic, payload=payload):
                return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(BrokerConfig(state_dir=tmp_path_factory.mktemp("broker"))) as b:
        yield b


@pytest.fixture(scope="module")
def certs(broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertPaths]:
    directory = tmp_path_factory.mktemp("devices")
    return {thing: broker.ca.issue_device_files(directory, thing) for thing in ("thing-a", "thing-b")}


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for c in opened:
        c.close()


def data_topic(thing: str, stream: str = "s1", fmt: str = "cbor") -> str:
    return f"$aws/things/{thing}/streams/{stream}/data/{fmt}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.e2e
def test_starts_on_free_ports_and_stops_by_pid(tmp_path: Path) -> None:
    broker = MosquittoBroker(BrokerConfig(state_dir=tmp_path))
    with broker:
        pid, ports = broker.pid, (broker.mqtt_port, broker.tls_port)
        assert len(set(ports)) == 2 and SYSTEM_BROKER_PORT not in ports
        assert pid_alive(pid) and broker.running
        assert all(accepts("127.0.0.1", p) for p in ports)
        config = broker.config_path.read_text()
        assert "set_tcp_nodelay true" in config and "max_queued_messages 1000" in config
        assert ("user root" in config) == (os.geteuid() == 0)
        assert (tmp_path / "ca" / "ca.private.key").stat().st_mode & 0o077 == 0
    assert not pid_alive(pid), "the mosquitto process is gone (and reaped) after stop()"
    assert not broker.running
    assert not any(accepts("127.0.0.1", p) for p in ports)
    assert "terminating" in broker.log_path.read_text()
    broker.stop()  # idempotent


@pytest.mark.e2e
def test_explicit_port_in_use_fails_fast_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = MosquittoBroker(BrokerConfig(state_dir=tmp_path, tls_port=port))
        with pytest.raises(BrokerStartError, match=f"port {port} on 127.0.0.1 is already in use") as err:
            broker.start()
    assert "Address already in use" in err.value.log_tail
    assert not broker.running


@pytest.mark.e2e
def test_mosquitto_failing_at_start_fails_fast_with_its_log(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    config = BrokerConfig(
        state_dir=tmp_path, ca_cert=missing / "ca.pem", server_cert=missing / "s.pem", server_key=missing / "s.key"
    )
    broker = MosquittoBroker(config)
    started = time.monotonic()
    with pytest.raises(BrokerStartError, match="exited with code") as err:
        broker.start()
    assert time.monotonic() - started < config.start_timeout / 2, "an exit is noticed at once, not at the deadline"
    assert "Unable to load CA certificates" in err.value.log_tail
    assert not broker.running


def test_missing_binary_tells_how_to_install(tmp_path: Path) -> None:
    broker = MosquittoBroker(BrokerConfig(state_dir=tmp_path, mosquitto_path=str(tmp_path / "no-mosquitto")))
    with pytest.raises(MosquittoNotFoundError, match="not an executable"):
        broker.start()


def test_config_rejects_partial_tls_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="all of ca_cert, server_cert and server_key"):
        BrokerConfig(state_dir=tmp_path, ca_cert=tmp_path / "ca.pem")


@pytest.mark.e2e
def test_plain_listener_carries_aws_topics_both_ways(broker: MosquittoBroker, clients: list[Client]) -> None:
    service = Client(broker, "service")
    device = Client(broker, "plain-device")
    clients += [service, device]
    assert not any(rc.is_failure for rc in service.subscribe("$aws/things/+/streams/+/get/+"))
    assert not any(rc.is_failure for rc in device.subscribe(data_topic("thing-x")))
    device.publish("$aws/things/thing-x/streams/s1/get/cbor", b"request")
    assert service.until("$aws/things/thing-x/streams/s1/get/cbor", b"request")[-1].payload == b"request"
    service.publish(data_topic("thing-x"), b"block")
    assert device.until(data_topic("thing-x"), b"block") == [Received(topic=data_topic("thing-x"), payload=b"block")]


def _tls_connect_outcome(broker: MosquittoBroker, certfile: Path | None, keyfile: Path | None) -> str:
    """Connect over TLS with paho (no network thread, no reconnects) and say how it ended."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder", protocol=mqtt.MQTTv311)
    outcome: list[str] = []
    client.on_connect = lambda c, u, f, rc, p: outcome.append("failed CONNACK" if rc.is_failure else "connected")
    client.on_disconnect = lambda c, u, f, rc, p: outcome.append("disconnected")
    client.tls_set(
        ca_certs=str(broker.ca_cert_path),
        certfile=None if certfile is None else str(certfile),
        keyfile=None if keyfile is None else str(keyfile),
    )
    try:
        client.connect(broker.host, broker.tls_port, keepalive=60)
        deadline = time.monotonic() + TIMEOUT
        while not outcome and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                outcome.append("socket error")
    except (ssl.SSLError, OSError) as e:
        outcome.append(f"handshake refused: {type(e).__name__}")
    finally:
        client.disconnect()
    return outcome[0] if outcome else "no answer"


@pytest.mark.e2e
def test_tls_without_client_certificate_is_refused(broker: MosquittoBroker) -> None:
    outcome = _tls_connect_outcome(broker, None, None)
    assert outcome != "connected" and outcome != "no answer", outcome


@pytest.mark.e2e
def test_tls_with_certificate_of_another_ca_is_refused(broker: MosquittoBroker, tmp_path: Path) -> None:
    stranger = LocalCA.create(tmp_path / "other-ca").issue_device_files(tmp_path, "thing-a")
    outcome = _tls_connect_outcome(broker, stranger.cert_path, stranger.key_path)
    assert outcome != "connected" and outcome != "no answer", outcome


@pytest.mark.e2e
def test_device_uses_its_own_topics_over_mtls(
    broker: MosquittoBroker, certs: dict[str, CertPaths], clients: list[Client]
) -> None:
    service = Client(broker, "service")
    device_a = Client(broker, "thing-a", device=certs["thing-a"])
    clients += [service, device_a]
    service.subscribe("$aws/things/+/streams/+/get/+")
    assert not any(rc.is_failure for rc in device_a.subscribe(data_topic("thing-a")))
    device_a.publish("$aws/things/thing-a/streams/s1/get/cbor", b"get")
    service.until("$aws/things/thing-a/streams/s1/get/cbor", b"get")
    service.publish(data_topic("thing-a"), b"block-for-a")
    device_a.until(data_topic("thing-a"), b"block-for-a")


@pytest.mark.e2e
def test_device_cannot_receive_another_things_blocks(
    broker: MosquittoBroker, certs: dict[str, CertPaths], clients: list[Client]
) -> None:
    service = Client(broker, "service")
    device_a = Client(broker, "thing-a", device=certs["thing-a"])
    clients += [service, device_a]
    # As on AWS, the SUBACK refuses both (MQTT 3.1.1: 0x80); the read check would filter on delivery anyway.
    refused = device_a.subscribe(data_topic("thing-b"), "$aws/things/thing-b/streams/#")
    assert [rc.value for rc in refused] == [0x80, 0x80]
    device_a.subscribe(data_topic("thing-a"))
    service.publish(data_topic("thing-b"), b"secret-block-of-b")
    service.publish(data_topic("thing-a"), b"marker")
    got = device_a.until(data_topic("thing-a"), b"marker")
    assert got == [Received(topic=data_topic("thing-a"), payload=b"marker")]


@pytest.mark.e2e
@pytest.mark.parametrize("forged_topic", ["$aws/things/thing-b/streams/s1/get/cbor", data_topic("thing-b")])
def test_device_cannot_publish_into_another_things_topics(
    broker: MosquittoBroker, certs: dict[str, CertPaths], clients: list[Client], forged_topic: str
) -> None:
    service = Client(broker, "service")
    device_a = Client(broker, "thing-a", device=certs["thing-a"])
    device_b = Client(broker, "thing-b", device=certs["thing-b"])
    clients += [service, device_a, device_b]
    service.subscribe("$aws/things/+/streams/#")
    device_b.subscribe("$aws/things/thing-b/streams/#")
    device_a.publish(forged_topic, b"forged")
    # local_iot's plugin closes the connection after a denied publish, as AWS IoT does on a policy violation.
    assert device_a.disconnects.get(timeout=TIMEOUT).is_failure
    # The forged publish was denied before the disconnect; anything routed would be queued ahead of this marker.
    service.publish(data_topic("thing-b"), b"marker")
    assert service.until(data_topic("thing-b"), b"marker") == [Received(topic=data_topic("thing-b"), payload=b"marker")]
    assert device_b.until(data_topic("thing-b"), b"marker") == [
        Received(topic=data_topic("thing-b"), payload=b"marker")
    ]


def _pump(
    client: mqtt.Client,
    done: Callable[[], bool],
    what: str,
    timeout: float = TIMEOUT,
    detail: Callable[[], str] = lambda: "",
) -> None:
    """Run a thread-less paho client's network loop on this thread until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; {detail()}")
        rc = client.loop(timeout=0.05)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"network loop failed while waiting for {what}: {rc}"


@pytest.mark.e2e
def test_qos0_flood_reaches_a_stalled_subscriber_without_loss(broker: MosquittoBroker, clients: list[Client]) -> None:
    """900 x 4 KiB at QoS 0 while the subscriber reads nothing: within the per-client cap (max_queued_messages
    1000, more than the 512 blocks of the largest answer) mosquitto queues them all, none is dropped. Past the cap
    it drops (test_local_iot_isolation.py): a client that stops reading cannot grow the broker without bound."""
    count, size = 900, 4096
    topic = data_topic("thing-flood")
    end = b"end"
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood-sub", protocol=mqtt.MQTTv311)
    acks: list[str] = []
    got: list[bytes] = []  # filled by callbacks that run on this thread (manual network loop)
    subscriber.on_connect = lambda c, u, f, rc, p: acks.append(f"connack {rc}")
    subscriber.on_subscribe = lambda c, u, mid, rcs, p: acks.append("suback")
    subscriber.on_message = lambda c, u, msg: got.append(msg.payload)
    subscriber.connect(broker.host, broker.mqtt_port, keepalive=60)
    try:
        _pump(subscriber, lambda: bool(acks), "CONNACK")
        assert acks == ["connack Success"]
        subscriber.subscribe(topic, 0)
        _pump(subscriber, lambda: "suback" in acks, "SUBACK")

        publisher = Client(broker, "flood-pub", nodelay=True)
        clients.append(publisher)
        filler = bytes(size - 4)
        for i in range(count):
            publisher.publish(topic, i.to_bytes(4, "big") + filler)
        # The broker handles one connection's packets in order: once it acknowledges this QoS 1 publish, every
        # QoS 0 message before it has been routed to the (stalled) subscriber's queue.
        publisher.publish(topic, end, qos=1).wait_for_publish(timeout=30)

        # If mosquitto dropped messages, it dropped this marker too: the wait then ends with the count received.
        _pump(
            subscriber,
            lambda: bool(got) and got[-1] == end,
            "the end marker",
            timeout=30,
            detail=lambda: f"received {len(got)} of {count} messages: mosquitto dropped the rest",
        )
    finally:
        subscriber.disconnect()
    indices = [int.from_bytes(p[:4], "big") for p in got[:-1]]
    assert len(indices) == count, f"lost {count - len(indices)} of {count} messages"
    assert indices == list(range(count))
    assert all(len(p) == size for p in got[:-1])


@pytest.mark.e2e
@pytest.mark.parametrize("endpoint", ["localhost", "127.0.0.1"])
def test_awscrt_device_connects_over_mtls_and_receives_its_topic(
    broker: MosquittoBroker, certs: dict[str, CertPaths], clients: list[Client], endpoint: str
) -> None:
    """The device transport (awscrt/s2n) accepts the server certificate and presents the device certificate."""
    from awscrt import mqtt5
    from awsiot import mqtt5_client_builder

    events: queue.Queue[tuple[str, object]] = queue.Queue()
    stopped = threading.Event()

    def on_message(data: mqtt5.PublishReceivedData) -> None:
        packet = data.publish_packet
        events.put(("message", (packet.topic, bytes(packet.payload or b""))))

    device = mqtt5_client_builder.mtls_from_path(
        endpoint=endpoint,
        port=broker.tls_port,
        cert_filepath=str(certs["thing-a"].cert_path),
        pri_key_filepath=str(certs["thing-a"].key_path),
        ca_filepath=str(broker.ca_cert_path),
        client_id="thing-a",  # the certificate's thing: any other client id is refused
        keep_alive_interval_sec=30,
        on_publish_received=on_message,
        on_lifecycle_connection_success=lambda data: events.put(("connected", None)),
        on_lifecycle_connection_failure=lambda data: events.put(("failed", data.exception)),
        on_lifecycle_stopped=lambda data: stopped.set(),
    )
    device.start()
    try:
        assert events.get(timeout=TIMEOUT) == ("connected", None)
        own = data_topic("thing-a", stream="crt")
        forbidden = data_topic("thing-b", stream="crt")
        subscribe = mqtt5.SubscribePacket(
            subscriptions=[mqtt5.Subscription(topic_filter=f, qos=mqtt5.QoS.AT_MOST_ONCE) for f in (forbidden, own)]
        )
        suback = device.subscribe(subscribe).result(TIMEOUT)
        assert suback.reason_codes == [mqtt5.SubackReasonCode.NOT_AUTHORIZED, mqtt5.SubackReasonCode.GRANTED_QOS_0]
        service = Client(broker, f"service-crt-{endpoint}")
        clients.append(service)
        service.publish(forbidden, b"not-for-a")
        service.publish(own, b"block")
        assert events.get(timeout=TIMEOUT) == ("message", (own, b"block"))
    finally:
        device.stop()
        assert stopped.wait(TIMEOUT)


def test_broker_may_open_as_many_files_as_the_hard_limit(tmp_path: Path) -> None:
    """mosquitto inherits the caller's soft open-files limit; the broker raises it so big fleets can connect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))  # a low soft limit, as in many shells
    try:
        with MosquittoBroker(BrokerConfig(state_dir=tmp_path, tls_port=None)) as broker:
            broker_soft, broker_hard = resource.prlimit(broker.pid, resource.RLIMIT_NOFILE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert broker_hard == hard
    assert broker_soft == (hard if hard != resource.RLIM_INFINITY else max(256, 1 << 20))
    assert broker_soft > 256
