"""Isolation and abuse, as AWS does it: the client id bound to the certificate's thing, certificates that are not
registered or not ACTIVE refused (and a live connection dropped when its certificate is deactivated), a
SUBSCRIBE outside the thing's topics refused in the SUBACK (MQTT 3.1.1 and 5), a client that stops reading capped,
private file modes whatever the umask. Real mosquitto with local_iot's plugin, real control plane."""

from __future__ import annotations

import os
import queue
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from local_iot.ca import CertPaths
from local_iot.runner import LocalIot, LocalIotSettings

from .streams import make_stream

pytestmark = pytest.mark.e2e
TIMEOUT = 10.0


class Device:
    """A paho device on the TLS listener; callbacks only feed queues."""

    def __init__(self, iot: LocalIot, client_id: str, paths: CertPaths, protocol: int = mqtt.MQTTv311) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.connacks: queue.Queue[Any] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(list(rcs))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.tls_set(ca_certs=iot.info["ca_cert"], certfile=str(paths.cert_path), keyfile=str(paths.key_path))
        self.client.reconnect_delay_set(30, 60)  # a kicked device stays kicked while the test looks
        self.client.connect("localhost", iot.info["tls_port"])
        self.client.loop_start()
        self.connack = self.connacks.get(timeout=TIMEOUT)

    def subscribe(self, *filters: str) -> list[int]:
        self.client.subscribe([(f, 0) for f in filters])
        return [int(rc.value) for rc in self.subacks.get(timeout=TIMEOUT)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def iot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIot]:
    with LocalIot(LocalIotSettings(state_dir=tmp_path_factory.mktemp("iso"))) as running:
        make_stream(running, "iso", b"i" * 9000)
        yield running


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    opened: list[Device] = []
    yield opened
    for d in opened:
        d.close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["mqtt311", "mqtt5"])
def test_a_foreign_client_id_is_refused(iot: LocalIot, tmp_path: Path, devices: list[Device], protocol: int) -> None:
    paths = iot.issue_device(f"iso-a-{protocol}", tmp_path)
    iot.issue_device(f"iso-b-{protocol}", tmp_path)
    victim = Device(iot, f"iso-b-{protocol}", iot.issue_device(f"iso-b-{protocol}", tmp_path / "b"), protocol)
    devices.append(victim)
    assert not victim.connack.is_failure
    intruder = Device(iot, f"iso-b-{protocol}", paths, protocol)  # thing A's certificate, thing B's client id
    devices.append(intruder)
    assert intruder.connack.is_failure and "authori" in str(intruder.connack).lower()
    assert victim.disconnects.empty(), "the refused intruder must not kick the device that owns the client id"
    own = Device(iot, f"iso-a-{protocol}", paths, protocol)
    devices.append(own)
    assert not own.connack.is_failure


def test_an_unregistered_certificate_of_the_local_ca_is_refused(
    iot: LocalIot, tmp_path: Path, devices: list[Device]
) -> None:
    paths = iot.issue_device("iso-unregistered", tmp_path, register=False)
    device = Device(iot, "iso-unregistered", paths)
    devices.append(device)
    assert device.connack.is_failure


@pytest.mark.parametrize("status", ["INACTIVE", "REVOKED"])
def test_a_deactivated_certificate_drops_the_live_connection_and_is_refused(
    iot: LocalIot, tmp_path: Path, devices: list[Device], status: str
) -> None:
    thing = f"iso-{status.lower()}"
    paths = iot.issue_device(thing, tmp_path)
    control = iot.client("iot")
    cert_id = control.list_thing_principals(thingName=thing)["principals"][0].rsplit("/", 1)[1]
    live = Device(iot, thing, paths)
    devices.append(live)
    assert not live.connack.is_failure
    control.update_certificate(certificateId=cert_id, newStatus=status)
    assert live.disconnects.get(timeout=TIMEOUT).is_failure  # dropped, as AWS does after UpdateCertificate
    again = Device(iot, thing, paths)
    devices.append(again)
    assert again.connack.is_failure
    control.update_certificate(certificateId=cert_id, newStatus="ACTIVE") if status == "INACTIVE" else None
    if status == "INACTIVE":
        back = Device(iot, thing, paths)
        devices.append(back)
        assert not back.connack.is_failure


@pytest.mark.parametrize(
    ("protocol", "refused"), [(mqtt.MQTTv311, 0x80), (mqtt.MQTTv5, 0x87)], ids=["mqtt311-0x80", "mqtt5-0x87"]
)
def test_a_subscribe_to_another_things_topics_is_refused_in_the_suback(
    iot: LocalIot, tmp_path: Path, devices: list[Device], protocol: int, refused: int
) -> None:
    thing = f"iso-sub-{protocol}"
    device = Device(iot, thing, iot.issue_device(thing, tmp_path), protocol)
    devices.append(device)
    codes = device.subscribe(
        f"$aws/things/{thing}/streams/iso/data/cbor",
        "$aws/things/someone-else/streams/iso/data/cbor",
        "$aws/things/+/streams/#",
        "#",
    )
    assert codes == [0, refused, refused, refused]


def broker_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def raw_tls_device(iot: LocalIot, thing: str, paths: CertPaths) -> ssl.SSLSocket:
    """A device that connects, subscribes to its data topic, and then never reads again."""
    context = ssl.create_default_context(cafile=iot.info["ca_cert"])
    context.load_cert_chain(str(paths.cert_path), str(paths.key_path))
    raw = socket.create_connection(("127.0.0.1", iot.info["tls_port"]))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    cid = thing.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK accepted
    topic = f"$aws/things/{thing}/streams/big/data/cbor".encode()
    sub = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x00"
    sock.sendall(bytes([0x82, len(sub)]) + sub)
    assert sock.recv(5) == b"\x90\x03\x00\x01\x00"  # SUBACK granted
    return sock


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    assert len(body) < 16384
    return bytes([0x30, (len(body) & 0x7F) | 0x80, len(body) >> 7]) + body


def test_a_client_that_stops_reading_is_capped(iot: LocalIot, tmp_path: Path, devices: list[Device]) -> None:
    """2000 requests of 128 KiB from one device that then reads nothing: uncapped that is 250 MiB in the broker;
    capped at 1000 queued messages it stays near 128 MiB and the broker drops the rest for that client only."""
    make_stream(iot, "big", os.urandom(131072))
    assert iot.broker is not None and iot.service is not None
    pid, service = iot.broker.pid, iot.service
    thing = "iso-lazy"
    sock = raw_tls_device(iot, thing, iot.issue_device(thing, tmp_path))
    try:
        before = broker_rss_mib(pid)
        served_before = service.stats().core.data_messages
        request = publish_packet(
            f"$aws/things/{thing}/streams/big/get/cbor", cbor2.dumps({"f": 0, "l": 131072, "n": 1})
        )
        count = 2000
        sock.sendall(request * count)
        wait = time.monotonic() + 60
        while service.stats().core.data_messages - served_before < count and time.monotonic() < wait:
            time.sleep(0.05)
        assert service.stats().core.data_messages - served_before >= count
        log = iot.broker.log_path

        def dropping() -> bool:
            return f"Outgoing messages are being dropped for client {thing}" in log.read_text(errors="replace")

        deadline = time.monotonic() + 30
        while not dropping() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dropping()
        grown = broker_rss_mib(pid) - before
        print(f"broker RSS {before:.0f} MiB -> +{grown:.0f} MiB after {count} x 128 KiB to a client that reads nothing")
        assert grown < 200, f"the broker grew by {grown:.0f} MiB"
        # the others are still served
        other = Device(iot, "iso-healthy", iot.issue_device("iso-healthy", tmp_path))
        devices.append(other)
        assert other.subscribe("$aws/things/iso-healthy/streams/iso/data/json") == [0]
        other.client.publish("$aws/things/iso-healthy/streams/iso/get/json", b'{"f":0,"l":1024,"o":2,"n":1}')
        message = other.messages.get(timeout=TIMEOUT)
        assert message.topic.endswith("/data/json")
    finally:
        sock.close()


def test_state_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        iot = LocalIot(LocalIotSettings(state_dir=tmp_path / "state")).start()
    finally:
        os.umask(old)
    try:
        state = iot.state_dir
        for directory in (state, state / "ca", state / "broker"):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        for path in state.rglob("*"):
            if path.is_file() and not path.name.endswith(".cert.pem") and not path.is_socket():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        iot.stop()


def test_no_plain_port_serves_devices_through_the_service_socket(tmp_path: Path, devices: list[Device]) -> None:
    with LocalIot(LocalIotSettings(state_dir=tmp_path / "state", plain_port=False)) as iot:
        make_stream(iot, "noplain", b"n" * 3000)
        assert iot.info["mqtt_port"] is None and Path(iot.info["mqtt_socket"]).is_socket()
        device = Device(iot, "np-0", iot.issue_device("np-0", tmp_path))
        devices.append(device)
        assert device.subscribe("$aws/things/np-0/streams/noplain/data/json") == [0]
        device.client.publish("$aws/things/np-0/streams/noplain/get/json", b'{"f":0,"l":1024,"o":1,"n":1}')
        assert device.messages.get(timeout=TIMEOUT).topic.endswith("/data/json")
        device.close()
        devices.remove(device)
