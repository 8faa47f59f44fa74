"""MqttTransport against a real mosquitto (local_iot.broker): MQTT5 and 3.1.1, plain and mutual TLS.

Bulk traffic comes from a raw-socket MQTT 3.1.1 publisher (TCP_NODELAY, all PUBLISH packets in one write), so the
measured rate is the transport's receive path, not a publisher's. What a client sends in CONNECT is read by a tiny
asyncio server that parses the packet (the only way to see the username awscrt really puts on the wire).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device_sim.transport import (
    ConnectError,
    ConnectFailure,
    ConnectionEvent,
    ConnectionEventKind,
    ConnectionLost,
    CrtResources,
    FlowControl,
    InvalidSettings,
    MqttProtocol,
    MqttTransport,
    QoS,
    SubscribeRejected,
    TransportClosed,
    TransportSettings,
    TransportState,
    TransportUsageError,
)
from local_iot.broker import BrokerConfig, MosquittoBroker
from local_iot.ca import CertPaths, LocalCA
from local_iot.ports import free_port

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
THING = "thing-1"
DATA_TOPIC = f"$aws/things/{THING}/streams/fw/data/cbor"
FILTERS = [f"$aws/things/{THING}/streams/fw/{op}/cbor" for op in ("data", "description", "rejected")]
PROTOCOLS = [pytest.param(MqttProtocol.MQTT5, id="mqtt5"), pytest.param(MqttProtocol.MQTT311, id="mqtt311")]


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(BrokerConfig(state_dir=tmp_path / "broker", tls_port=None)) as b:
        yield b


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(BrokerConfig(state_dir=tmp_path_factory.mktemp("tls-broker"))) as b:
        yield b


@pytest.fixture(scope="module")
def device(tls_broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return tls_broker.ca.issue_device_files(tmp_path_factory.mktemp("device"), THING)


_DYNSEC = {
    "defaultACLAccess": {
        "publishClientSend": True,
        "publishClientReceive": True,
        "subscribe": False,
        "unsubscribe": True,
    },
    "clients": [],
    "groups": [{"groupname": "devices", "roles": [{"rolename": "device"}]}],
    "anonymousGroup": "devices",
    "roles": [
        {
            "rolename": "device",
            "acls": [{"acltype": "subscribePattern", "topic": f"$aws/things/{THING}/streams/#", "allow": True}],
        }
    ],
}
_DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A mosquitto that, like AWS IoT, answers SUBACK with a failure for a filter the client may not use.

    local_iot's broker uses an acl_file, with which mosquitto grants every SUBACK and filters on delivery; the
    dynamic-security plugin refuses the subscription itself. Only THING's stream topics may be subscribed.
    """
    if not _DYNSEC_PLUGIN.exists():
        pytest.skip("mosquitto's dynamic security plugin is not installed")
    directory = tmp_path_factory.mktemp("acl-broker")
    (directory / "dynsec.json").write_text(json.dumps(_DYNSEC))
    port = free_port()
    (directory / "mosquitto.conf").write_text(
        f"per_listener_settings false\nallow_anonymous true\nlistener {port} 127.0.0.1\n"
        f"plugin {_DYNSEC_PLUGIN}\nplugin_opt_config_file {directory / 'dynsec.json'}\n"
        f"log_dest file {directory / 'mosquitto.log'}\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    with open(directory / "mosquitto.stderr", "wb") as stderr:
        proc = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", str(directory / "mosquitto.conf")], stdout=stderr, stderr=stderr
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _accepts(port):
            assert proc.poll() is None, (directory / "mosquitto.log").read_text()
            assert time.monotonic() < deadline, "mosquitto with dynsec did not come up"
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def plain(broker: MosquittoBroker, protocol: MqttProtocol, **kw: Any) -> TransportSettings:
    base: dict[str, Any] = {"client_id": THING, "flow_control": FlowControl.NONE, "reconnect_min_s": 0.2}
    return TransportSettings(endpoint=broker.host, port=broker.mqtt_port, no_tls=True, protocol=protocol, **(base | kw))


def mtls(broker: MosquittoBroker, device: CertPaths, protocol: MqttProtocol, **kw: Any) -> TransportSettings:
    base: dict[str, Any] = {"client_id": THING, "flow_control": FlowControl.NONE, "ca": broker.ca_cert_path}
    return TransportSettings(
        endpoint="localhost",
        port=broker.tls_port,
        cert=device.cert_path,
        key=device.key_path,
        protocol=protocol,
        **(base | kw),
    )


class Inbox:
    """Collects messages in the loop; ``wait_for(n)`` returns when n have arrived."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.threads: set[int] = set()
        self.payload_types: set[type] = set()
        self.first_at: float | None = None
        self._want = 0
        self._enough = asyncio.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.threads.add(threading.get_ident())
        self.payload_types.add(type(payload))
        self.messages.append((topic, payload))
        if len(self.messages) >= self._want:
            self._enough.set()

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> None:
        self._want = count
        if len(self.messages) < count:
            self._enough.clear()
            await asyncio.wait_for(self._enough.wait(), timeout)


class Events:
    def __init__(self) -> None:
        self.seen: list[ConnectionEvent] = []
        self._queue: asyncio.Queue[ConnectionEvent] = asyncio.Queue()

    def __call__(self, event: ConnectionEvent) -> None:
        self.seen.append(event)
        self._queue.put_nowait(event)

    async def next(self, timeout: float = TIMEOUT) -> ConnectionEvent:
        return await asyncio.wait_for(self._queue.get(), timeout)


def run(coro: Callable[[], Any]) -> Any:
    return asyncio.run(coro())


# ----------------------------------------------------------------------------------------- raw MQTT 3.1.1 helpers


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def _packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + _varint(len(body)) + body


def raw_publish(host: str, port: int, messages: list[tuple[str, bytes]]) -> None:
    """Connect as MQTT 3.1.1, send every message at QoS 0 in one write, disconnect."""
    connect = _packet(0x10, _string(b"MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + _string(b"raw-pub"))
    burst = b"".join(_packet(0x30, _string(t.encode()) + p) for t, p in messages)
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect)
        assert s.recv(4) == b"\x20\x02\x00\x00"
        s.sendall(burst + b"\xe0\x00")


async def _read_varint(reader: asyncio.StreamReader) -> int:
    value, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value


class ConnectCapture:
    """A one-connection 'broker' that records the CONNECT packet's fields and answers CONNACK (accepted)."""

    def __init__(self) -> None:
        self.connects: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert (await reader.readexactly(1))[0] >> 4 == 1
        body = await reader.readexactly(await _read_varint(reader))
        pos = 2 + int.from_bytes(body[:2], "big")
        level, flags = body[pos], body[pos + 1]
        keepalive = int.from_bytes(body[pos + 2 : pos + 4], "big")
        pos += 4
        if level == 5:
            props = body[pos:]
            plen, shift, i = 0, 0, 0
            while True:
                plen |= (props[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not props[i - 1] & 0x80:
                    break
            pos += i + plen
        fields: list[str] = []
        for _ in range(1 + bool(flags & 0x80)):
            n = int.from_bytes(body[pos : pos + 2], "big")
            fields.append(body[pos + 2 : pos + 2 + n].decode())
            pos += 2 + n
        self.connects.put_nowait(
            {"level": level, "keepalive": keepalive, "client_id": fields[0], "username": fields[1:] or None}
        )
        writer.write(b"\x20\x03\x00\x00\x00" if level == 5 else b"\x20\x02\x00\x00")
        await writer.drain()
        await reader.read()  # until the client goes away
        writer.close()


# ------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_subscribe_publish_receive_in_order_in_the_loop(broker: MosquittoBroker, protocol: MqttProtocol) -> None:
    async def main() -> None:
        inbox = Inbox()
        async with MqttTransport(plain(broker, protocol), on_message=inbox) as mqtt:
            assert mqtt.state is TransportState.CONNECTED
            assert await mqtt.subscribe(FILTERS, qos=1) == [1, 1, 1]
            assert mqtt.subscriptions == dict.fromkeys(FILTERS, 1)
            for i in range(5):
                await mqtt.publish(DATA_TOPIC, b"block %d" % i, qos=i % 2)
            await inbox.wait_for(5)
            assert inbox.messages == [(DATA_TOPIC, b"block %d" % i) for i in range(5)]
            assert inbox.threads == {threading.get_ident()}  # delivered in the event loop's thread
            assert inbox.payload_types == {bytes}
            assert mqtt.pending_operations == 0
        assert mqtt.state is TransportState.CLOSED

    run(main)


def test_mqtt5_messages_take_the_direct_path_and_qos1_is_still_acknowledged(broker: MosquittoBroker) -> None:
    """awscrt's PublishPacket path is bypassed for our clients (_mqtt5._DirectPublishCore); QoS 1 deliveries are
    still acknowledged by awscrt: mosquitto stops sending QoS 1 messages to a client with 20 unacknowledged ones
    (max_inflight_messages), so 60 arriving means every one was acknowledged."""
    from device_sim.transport._mqtt5 import Mqtt5Driver

    before = Mqtt5Driver.slow_publishes

    async def main() -> None:
        inbox = Inbox()
        async with MqttTransport(plain(broker, MqttProtocol.MQTT5), on_message=inbox) as mqtt:
            await mqtt.subscribe(FILTERS, qos=1)
            for i in range(60):
                await mqtt.publish(DATA_TOPIC, b"block %d" % i, qos=1)
            await inbox.wait_for(60)
            assert inbox.messages == [(DATA_TOPIC, b"block %d" % i) for i in range(60)]
            assert inbox.threads == {threading.get_ident()}

    run(main)
    assert Mqtt5Driver.slow_publishes == before  # none went through awscrt's PublishPacket path


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_2000_messages_of_4_kib_arrive_without_loss(broker: MosquittoBroker, protocol: MqttProtocol) -> None:
    count, size = 2000, 4096
    messages = [(DATA_TOPIC, i.to_bytes(4, "big") + bytes([i % 251]) * (size - 4)) for i in range(count)]

    async def main() -> None:
        inbox = Inbox()
        async with MqttTransport(plain(broker, protocol), on_message=inbox) as mqtt:
            await mqtt.subscribe(FILTERS)
            start = time.perf_counter()
            await asyncio.to_thread(raw_publish, broker.host, broker.mqtt_port, messages)
            await inbox.wait_for(count, timeout=60)
            elapsed = time.perf_counter() - start
        assert len(inbox.messages) == count
        assert inbox.messages == messages  # none lost, none reordered, payloads intact
        rate = count / elapsed
        mb_s = rate * size / 1e6
        print(f"\n{protocol.value}: {count} x {size} B in {elapsed:.3f} s = {rate:.0f} msg/s, {mb_s:.1f} MB/s")

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connect_to_a_closed_port_fails_fast(protocol: MqttProtocol) -> None:
    port = free_port()  # nothing listens there any more

    async def main() -> None:
        settings = TransportSettings(endpoint="127.0.0.1", port=port, no_tls=True, client_id=THING, protocol=protocol)
        mqtt = MqttTransport(settings, on_message=Inbox())
        start = time.perf_counter()
        with pytest.raises(ConnectError) as info:
            await mqtt.connect()
        assert time.perf_counter() - start < 2.0
        assert info.value.kind is ConnectFailure.UNREACHABLE
        assert info.value.hint is not None and "--port" in info.value.hint
        assert f"127.0.0.1:{port}" in str(info.value)
        assert mqtt.state is TransportState.CLOSED
        with pytest.raises(TransportUsageError, match="not allowed while the transport is closed"):
            await mqtt.connect()

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mutual_tls(tls_broker: MosquittoBroker, device: CertPaths, protocol: MqttProtocol) -> None:
    async def main() -> None:
        inbox = Inbox()
        async with MqttTransport(mtls(tls_broker, device, protocol), on_message=inbox) as mqtt:
            assert await mqtt.subscribe(FILTERS) == [0, 0, 0]
            await mqtt.publish(DATA_TOPIC, b"over TLS")
            await inbox.wait_for(1)
            assert inbox.messages == [(DATA_TOPIC, b"over TLS")]

    run(main)


@pytest.mark.parametrize(("protocol", "code"), [(MqttProtocol.MQTT5, 0x87), (MqttProtocol.MQTT311, 0x80)])
def test_a_subscription_the_broker_refuses(acl_broker: int, protocol: MqttProtocol, code: int) -> None:
    other = "$aws/things/thing-2/streams/fw/data/cbor"

    async def main() -> None:
        settings = TransportSettings(
            endpoint="127.0.0.1", port=acl_broker, no_tls=True, client_id=THING, protocol=protocol
        )
        async with MqttTransport(settings, on_message=Inbox()) as mqtt:
            with pytest.raises(SubscribeRejected) as info:
                await mqtt.subscribe([FILTERS[0], other])
            assert info.value.rejected == {other: code}  # the allowed filter is not listed
            assert "iot:Subscribe" in str(info.value)
            assert mqtt.subscriptions == {FILTERS[0]: 0}  # granted: re-subscribed after a reconnect
            assert await mqtt.subscribe(FILTERS) == [0, 0, 0]
            assert mqtt.state is TransportState.CONNECTED

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_wrong_ca_fails_fast_with_a_hint(
    tls_broker: MosquittoBroker, device: CertPaths, protocol: MqttProtocol, tmp_path: Path
) -> None:
    wrong_ca = LocalCA.create(tmp_path / "other-ca", common_name="someone else's CA")

    async def main() -> None:
        settings = mtls(tls_broker, device, protocol, ca=wrong_ca.cert_path, tls_probe_after_s=0.3)
        mqtt = MqttTransport(settings, on_message=Inbox())
        start = time.perf_counter()
        with pytest.raises(ConnectError) as info:
            await mqtt.connect()
        assert time.perf_counter() - start < 5.0  # awscrt alone reports this only after 10-30 s
        assert info.value.kind is ConnectFailure.TLS
        assert "does not verify" in str(info.value) and "--ca" in (info.value.hint or "")
        assert mqtt.state is TransportState.CLOSED

    run(main)


def test_without_the_probe_a_wrong_ca_is_a_timeout_that_mentions_tls(
    tls_broker: MosquittoBroker, device: CertPaths, tmp_path: Path
) -> None:
    wrong_ca = LocalCA.create(tmp_path / "other-ca")

    async def main() -> None:
        settings = mtls(
            tls_broker, device, MqttProtocol.MQTT5, ca=wrong_ca.cert_path, tls_probe_after_s=None, connect_timeout_s=1.5
        )
        with pytest.raises(ConnectError) as info:
            await MqttTransport(settings, on_message=Inbox()).connect()
        assert info.value.kind is ConnectFailure.TIMEOUT
        assert "certificate" in (info.value.hint or "")

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_client_certificate_the_broker_does_not_trust_is_a_tls_error(
    tls_broker: MosquittoBroker, protocol: MqttProtocol, tmp_path: Path
) -> None:
    stranger = LocalCA.create(tmp_path / "stranger-ca").issue_device_files(tmp_path / "stranger", THING)

    async def main() -> None:
        with pytest.raises(ConnectError) as info:
            await MqttTransport(mtls(tls_broker, stranger, protocol), on_message=Inbox()).connect()
        assert info.value.kind is ConnectFailure.TLS
        assert "client certificate" in (info.value.hint or "")

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_close_fails_pending_operations(broker: MosquittoBroker, protocol: MqttProtocol) -> None:
    async def main() -> None:
        mqtt = MqttTransport(plain(broker, protocol), on_message=Inbox())
        await mqtt.connect()
        os.kill(broker.pid, signal.SIGSTOP)  # the broker stops answering: acknowledgements never come
        try:
            publish = asyncio.create_task(mqtt.publish(DATA_TOPIC, b"x", qos=1))
            subscribe = asyncio.create_task(mqtt.subscribe(FILTERS))
            await asyncio.sleep(0)  # let both tasks send and register
            assert mqtt.pending_operations >= 2
            await mqtt.close()
            for task in (publish, subscribe):
                with pytest.raises(TransportClosed):
                    await asyncio.wait_for(task, TIMEOUT)
            assert mqtt.pending_operations == 0 and mqtt.state is TransportState.CLOSED
            with pytest.raises(TransportClosed):
                await mqtt.publish(DATA_TOPIC, b"after close")
        finally:
            os.kill(broker.pid, signal.SIGCONT)

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_broker_killed_then_back_resumes_with_subscriptions(tmp_path: Path, protocol: MqttProtocol) -> None:
    port = free_port()
    config = BrokerConfig(state_dir=tmp_path / "broker", tls_port=None, mqtt_port=port)

    async def main() -> None:
        inbox, events = Inbox(), Events()
        first = MosquittoBroker(config).start()
        mqtt = MqttTransport(plain(first, protocol), on_message=inbox, on_connection_event=events)
        try:
            await mqtt.connect()
            await mqtt.subscribe(FILTERS)
            os.kill(first.pid, signal.SIGSTOP)
            pending = asyncio.create_task(mqtt.publish(DATA_TOPIC, b"lost", qos=1))
            await asyncio.sleep(0)
            os.kill(first.pid, signal.SIGKILL)
            event = await events.next()
            assert event.kind is ConnectionEventKind.INTERRUPTED and isinstance(event.error, ConnectionLost)
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(pending, TIMEOUT)
            assert mqtt.state is TransportState.RECONNECTING
            with pytest.raises(ConnectionLost, match="reconnecting"):
                await mqtt.publish(DATA_TOPIC, b"while down")
            first.stop()
            with MosquittoBroker(config) as second:
                event = await events.next(timeout=20)
                assert event.kind is ConnectionEventKind.RESUMED
                assert mqtt.state is TransportState.CONNECTED
                await asyncio.to_thread(raw_publish, second.host, port, [(DATA_TOPIC, b"after resume")])
                await inbox.wait_for(1)  # arrives only because the transport re-subscribed
                assert inbox.messages == [(DATA_TOPIC, b"after resume")]
                await mqtt.close()
        finally:
            first.stop()
            await mqtt.close()

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_without_reconnect_a_killed_broker_is_lost_for_good(broker: MosquittoBroker, protocol: MqttProtocol) -> None:
    async def main() -> None:
        events = Events()
        mqtt = MqttTransport(plain(broker, protocol, reconnect=False), on_message=Inbox(), on_connection_event=events)
        await mqtt.connect()
        os.kill(broker.pid, signal.SIGKILL)
        event = await events.next()
        assert event.kind is ConnectionEventKind.LOST
        assert mqtt.state in (TransportState.CLOSING, TransportState.CLOSED)
        with pytest.raises(TransportClosed):
            await mqtt.publish(DATA_TOPIC, b"x")
        await mqtt.close()
        assert mqtt.state is TransportState.CLOSED

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("metrics", [False, True], ids=["metrics-off", "metrics-on"])
def test_what_connect_sends(protocol: MqttProtocol, metrics: bool) -> None:
    async def main() -> None:
        capture = ConnectCapture()
        server = await asyncio.start_server(capture.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = TransportSettings(
            endpoint="127.0.0.1", port=port, no_tls=True, client_id=THING, protocol=protocol, metrics=metrics
        )
        async with server, MqttTransport(settings, on_message=Inbox()):
            connect = await asyncio.wait_for(capture.connects.get(), TIMEOUT)
        assert connect["level"] == (5 if protocol is MqttProtocol.MQTT5 else 4)
        assert connect["client_id"] == THING and connect["keepalive"] == 30
        if metrics:
            assert connect["username"] is not None and connect["username"][0].startswith("?SDK=")
        else:
            assert connect["username"] is None  # no "?SDK=..." metrics: no username at all

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_aws_flow_control_paces_publishes_to_100_per_second(broker: MosquittoBroker, protocol: MqttProtocol) -> None:
    async def main() -> None:
        elapsed = {}
        for flow in (FlowControl.AWS, FlowControl.NONE):
            inbox = Inbox()
            async with MqttTransport(plain(broker, protocol, flow_control=flow), on_message=inbox) as mqtt:
                await mqtt.subscribe(FILTERS)
                start = time.perf_counter()
                for i in range(31):
                    await mqtt.publish(DATA_TOPIC, b"%d" % i)
                elapsed[flow] = time.perf_counter() - start
                await inbox.wait_for(31)
        # 30 intervals of 10 ms, less the one or two publishes awscrt's token bucket may let go at once (seen: 0.288 s)
        assert elapsed[FlowControl.AWS] >= 0.27
        assert elapsed[FlowControl.NONE] < elapsed[FlowControl.AWS]

    run(main)


def test_usage_errors_name_the_state(broker: MosquittoBroker) -> None:
    async def main() -> None:
        mqtt = MqttTransport(plain(broker, MqttProtocol.MQTT5), on_message=Inbox())
        with pytest.raises(TransportUsageError, match="await connect"):
            await mqtt.publish(DATA_TOPIC, b"too early")
        async with mqtt:
            with pytest.raises(
                TransportUsageError, match=r"connect\(\) is not allowed while the transport is connected"
            ):
                await mqtt.connect()
        await mqtt.close()  # idempotent
        assert mqtt.state is TransportState.CLOSED

    run(main)


def test_many_clients_share_the_crt_threads(broker: MosquittoBroker) -> None:
    def os_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    async def main() -> None:
        resources = CrtResources.create(threads=2)
        before = os_threads()
        clients = [
            MqttTransport(
                plain(broker, MqttProtocol.MQTT5, client_id=f"dev-{i}"), on_message=Inbox(), resources=resources
            )
            for i in range(40)
        ]
        await asyncio.gather(*(c.connect() for c in clients))
        assert all(c.state is TransportState.CONNECTED for c in clients)
        grown = os_threads() - before
        await asyncio.gather(*(c.close() for c in clients))
        assert grown <= 2, f"{grown} OS threads appeared for 40 connections"

    run(main)


def test_non_pem_certificate_is_an_invalid_setting(tmp_path: Path) -> None:
    """awscrt raises a bare RuntimeError for garbage PEM; the boundary turns it into InvalidSettings with a hint."""
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    settings = TransportSettings(
        endpoint="127.0.0.1", port=free_port(), cert=tmp_path / "c.pem", key=tmp_path / "k.pem", client_id="x"
    )

    async def connect() -> None:
        async with MqttTransport(settings, on_message=lambda topic, payload: None):
            pass

    with pytest.raises(InvalidSettings) as info:
        asyncio.run(connect())
    assert "PEM" in str(info.value)


# ------------------------------------------------------------------------------------------ publish_nowait, hop


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_publish_nowait_delivers_and_reports_in_the_loop(broker: MosquittoBroker, protocol: MqttProtocol) -> None:
    async def main() -> None:
        inbox = Inbox()
        async with MqttTransport(plain(broker, protocol), on_message=inbox) as mqtt:
            await mqtt.subscribe(FILTERS, qos=1)
            reports: list[tuple[int, object, int]] = []
            all_reported = asyncio.Event()

            def reporter(i: int) -> Callable[[object], None]:
                def on_done(error: object) -> None:
                    reports.append((i, error, threading.get_ident()))
                    if len(reports) == 100:
                        all_reported.set()

                return on_done

            for i in range(100):
                mqtt.publish_nowait(DATA_TOPIC, b"%d" % i, qos=i % 2, on_done=reporter(i))
            for i in range(100, 200):
                mqtt.publish_nowait(DATA_TOPIC, b"%d" % i)  # fire and forget
            assert mqtt.pending_operations == 0  # nothing to await, nothing tracked
            await asyncio.wait_for(all_reported.wait(), TIMEOUT)
            await inbox.wait_for(200)
        assert sorted(i for i, _, _ in reports) == list(range(100))
        assert {error for _, error, _ in reports} == {None}
        assert {thread for _, _, thread in reports} == {threading.get_ident()}
        assert sorted(int(payload) for _, payload in inbox.messages) == list(range(200))

    run(main)


def test_publish_nowait_errors_come_as_transport_errors(broker: MosquittoBroker) -> None:
    async def main() -> None:
        mqtt = MqttTransport(plain(broker, MqttProtocol.MQTT5), on_message=Inbox())
        with pytest.raises(TransportUsageError, match="await connect"):
            mqtt.publish_nowait(DATA_TOPIC, b"too early")
        async with mqtt:
            reported: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            mqtt.publish_nowait(DATA_TOPIC, bytes(300_000), on_done=reported.set_result)  # over the broker's maximum
            assert not reported.done()  # never called back inside the call
            error = await asyncio.wait_for(reported, TIMEOUT)
            assert isinstance(error, TransportUsageError) and "PACKET_VALIDATION" in str(error)
            assert type(error.__cause__).__name__ == "AwsCrtError"
        with pytest.raises(TransportClosed):
            mqtt.publish_nowait(DATA_TOPIC, b"too late")

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_aws_flow_control_paces_publish_nowait_and_reports_when_sent(
    broker: MosquittoBroker, protocol: MqttProtocol
) -> None:
    async def main() -> None:
        inbox = Inbox()
        async with MqttTransport(plain(broker, protocol, flow_control=FlowControl.AWS), on_message=inbox) as mqtt:
            await mqtt.subscribe(FILTERS)
            sent: list[float] = []
            last = asyncio.Event()

            def on_done(error: object) -> None:
                assert error is None
                sent.append(time.perf_counter())
                if len(sent) == 31:
                    last.set()

            start = time.perf_counter()
            for i in range(31):
                mqtt.publish_nowait(DATA_TOPIC, b"%d" % i, on_done=on_done)
            queued = time.perf_counter() - start
            await asyncio.wait_for(last.wait(), TIMEOUT)
            await inbox.wait_for(31)
        assert queued < 0.29  # handing them over does not wait for the pacing ...
        assert sent[-1] - start >= 0.29  # ... but "sent" is reported as they leave, 10 ms apart

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_burst_of_messages_arrives_in_order_through_the_hop(broker: MosquittoBroker, protocol: MqttProtocol) -> None:
    count = 5000
    messages = [(DATA_TOPIC, i.to_bytes(4, "big") + bytes(252)) for i in range(count)]

    async def main() -> None:
        inbox = Inbox()
        async with MqttTransport(plain(broker, protocol), on_message=inbox) as mqtt:
            await mqtt.subscribe(FILTERS)
            before = mqtt.wakeups
            await asyncio.to_thread(raw_publish, broker.host, broker.mqtt_port, messages)
            await inbox.wait_for(count, timeout=60)
            wakeups = mqtt.wakeups - before
        assert inbox.messages == messages  # none lost, none reordered
        # One wake-up per burst the loop had not drained yet: never more than one per message (how many fewer
        # depends on how far the loop lags; tests/unit/test_transport_settings.py pins the batching down).
        assert 0 < wakeups <= count
        print(f"\n{protocol.value}: {count} messages, {wakeups} event-loop wake-ups")

    run(main)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_awscrt_threads_keep_their_python_thread_state(broker: MosquittoBroker, protocol: MqttProtocol) -> None:
    """The transport lets awscrt's event-loop threads keep one Python thread state (``keep_thread_state``) instead
    of a new one for every callback: a thread-local value set in one awscrt callback is still there in the next.
    With a fresh thread state per callback each would find the thread-local empty."""
    local = threading.local()
    seen: list[tuple[int, bool]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with MqttTransport(plain(broker, protocol), on_message=Inbox()) as mqtt:
            driver = mqtt._driver
            assert driver is not None
            for i in range(3):
                done = asyncio.Event()

                def probe(_future: object, done: asyncio.Event = done) -> None:  # on the thread completing it
                    seen.append((threading.get_ident(), getattr(local, "mark", False)))
                    local.mark = True
                    loop.call_soon_threadsafe(done.set)

                driver.publish(DATA_TOPIC, b"probe %d" % i, QoS.AT_LEAST_ONCE).add_done_callback(probe)
                await asyncio.wait_for(done.wait(), 10)

    run(main)
    threads = {ident for ident, _ in seen}
    assert len(seen) == 3 and len(threads) == 1 and threading.get_ident() not in threads  # one awscrt thread
    assert [mark for _, mark in seen] == [False, True, True]
