"""A raw MQTT test client for the conformance suite: paho-mqtt 2 on the wire, none of device_sim's code.

How this works: ``RawClient`` is one paho client (MQTT 3.1.1, like the AWS device libraries) with its own network
thread, connected to local_iot's plain listener or, with a device certificate, to its mutual-TLS listener.
``watch(thing, stream)`` subscribes to that stream's answer topics (description, data and rejected, both formats),
waits for the SUBACK and returns a ``StreamProbe``: every message the broker delivers for that thing and stream
lands in the probe's own queue, so tests on different streams never see each other's answers. Tests publish raw
bytes (built by hand with cbor2/json, never with the device codec) and wait for answers with timeouts; nothing
sleeps. A message for no probe goes to ``RawClient.unrouted``.

Also here: ``cbor_map`` builds definite or indefinite CBOR maps item by item (cbor2 only writes definite ones),
and ``cbor_top_keys`` reads the key sequence of a top-level CBOR map from the raw bytes.
"""

from __future__ import annotations

import base64
import json
import queue
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "ANSWER_OPERATIONS",
    "Answer",
    "ClientError",
    "NoAnswer",
    "Raw",
    "RawClient",
    "StreamProbe",
    "cbor_map",
    "cbor_top_keys",
    "encode",
    "expect_blocks",
    "expect_rejection",
]

TIMEOUT = 10.0  # seconds to wait for a CONNACK, a SUBACK or an answer that must come
ANSWER_OPERATIONS = ("description", "data", "rejected")
_PREFIX = "$aws/things/"


class ClientError(Exception):
    """The test client could not connect or subscribe; the message says what failed."""


class NoAnswer(AssertionError):
    """An answer that must arrive did not arrive in time (a test failure, not a client error)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Answer:
    """One message delivered to the client, with the operation and format read from its topic."""

    topic: str
    payload: bytes
    operation: str
    format: str
    qos: int = 0

    @property
    def doc(self) -> Any:
        """The payload decoded by cbor2 or json (by the topic's format segment), nothing else."""
        if self.format == "cbor":
            return cbor2.loads(self.payload)
        return json.loads(self.payload)

    def brief(self) -> str:
        """The topic's operation/format and the decoded answer, a payload ``p`` shown as its length."""
        try:
            doc = self.doc
        except ValueError:
            return f"{self.operation}/{self.format} undecodable {self.payload[:40]!r}"
        if isinstance(doc, dict) and "p" in doc:
            doc = doc | {"p": f"<{len(doc['p'])}>"}
        return f"{self.operation}/{self.format} {doc}"


class StreamProbe:
    """Requests and answers of one thing and stream; created by ``RawClient.watch``."""

    def __init__(self, client: RawClient, thing: str, stream_id: str) -> None:
        self.client = client
        self.thing = thing
        self.stream_id = stream_id
        self.inbox: queue.Queue[Answer] = queue.Queue()
        self.granted: list[ReasonCode] = []

    def topic(self, operation: str, fmt: str) -> str:
        return f"{_PREFIX}{self.thing}/streams/{self.stream_id}/{operation}/{fmt}"

    def send(self, operation: str, fmt: str, payload: bytes) -> None:
        self.client.publish(self.topic(operation, fmt), payload)

    def next(self, timeout: float = TIMEOUT) -> Answer:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise NoAnswer(f"no answer for {self.thing}/{self.stream_id} within {timeout} s") from None

    def collect(self, count: int, timeout: float = TIMEOUT) -> list[Answer]:
        return [self.next(timeout) for _ in range(count)]

    def ask(self, operation: str, fmt: str, payload: bytes, count: int = 1) -> list[Answer]:
        """Publish one request and return the next ``count`` answers."""
        self.send(operation, fmt, payload)
        return self.collect(count)

    def ask_one(self, operation: str, fmt: str, payload: bytes) -> Answer:
        return self.ask(operation, fmt, payload)[0]

    def until_marker(self, token: str, fmt: str = "json") -> list[Answer]:
        """Publish a describe with client token ``token``; return every answer that arrived before its answer.

        The service answers requests of one connection in order and mosquitto keeps that order, so this proves
        that nothing more arrived for the requests published before the marker.
        """
        marker = json.dumps({"c": token}).encode() if fmt == "json" else cbor2.dumps({"c": token})
        self.send("describe", fmt, marker)
        before: list[Answer] = []
        while True:
            answer = self.next()
            if answer.operation == "description" and answer.format == fmt and answer.doc.get("c") == token:
                return before
            before.append(answer)

    def drain(self) -> list[Answer]:
        """Every answer already in the queue, without waiting."""
        out: list[Answer] = []
        while True:
            try:
                out.append(self.inbox.get_nowait())
            except queue.Empty:
                return out

    def assert_quiet(self) -> None:
        """Nothing is waiting in the queue (call after ``until_marker`` to prove no stray answer came)."""
        assert self.inbox.empty(), f"unexpected answer: {self.inbox.get_nowait()}"


class RawClient:
    """One raw MQTT 3.1.1 connection; messages are routed to the ``StreamProbe`` of their thing and stream."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        ca_cert: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> None:
        self.client_id = client_id
        self.unrouted: queue.Queue[Answer] = queue.Queue()
        self._probes: dict[tuple[str, str], StreamProbe] = {}
        self._lock = threading.Lock()
        self._acks: dict[int, list[ReasonCode]] = {}
        self._acked = threading.Condition(self._lock)
        self._connected: queue.Queue[ReasonCode] = queue.Queue()
        self.disconnects: queue.Queue[ReasonCode] = queue.Queue()  # a reason code per lost connection
        self._mqtt = mqtt.Client(  # no silent reconnect: a test must see a lost connection
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
        )
        self._mqtt.on_connect = self._on_connect
        self._mqtt.on_subscribe = self._on_subscribe
        self._mqtt.on_message = self._on_message
        self._mqtt.on_disconnect = self._on_disconnect
        if cert is not None:
            self._mqtt.tls_set(
                ca_certs=str(ca_cert), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT
            )
        try:
            self._mqtt.connect(host, port)
        except OSError as exc:
            raise ClientError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._mqtt.loop_start()
        try:
            code = self._connected.get(timeout=TIMEOUT)
        except queue.Empty:
            self.close()
            raise ClientError(f"no CONNACK from {host}:{port} within {TIMEOUT} s") from None
        if code.is_failure:
            self.close()
            raise ClientError(f"{host}:{port} refused the connection: {code}")

    @classmethod
    def plain(cls, info: dict[str, Any], client_id: str) -> RawClient:
        """A client of local_iot's plain listener (no ACL there), from ``LocalIot.info``."""
        return cls(info["mqtt_host"], info["mqtt_port"], client_id=client_id)

    @classmethod
    def mutual_tls(cls, info: dict[str, Any], thing: str, cert: Path, key: Path) -> RawClient:
        """A device over mutual TLS: certificate CN = thing name = client id, as the AWS policy requires."""
        return cls("localhost", info["tls_port"], client_id=thing, ca_cert=info["ca_cert"], cert=cert, key=key)

    # -- subscriptions --------------------------------------------------------------------------------------------

    def subscribe(self, *filters: str, qos: int = 0) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK; returns its reason codes (one per filter)."""
        result, mid = self._mqtt.subscribe([(f, qos) for f in filters])
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ClientError(f"SUBSCRIBE {filters} failed to send: {mqtt.error_string(result)}")
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self._acks, timeout=TIMEOUT):
                raise ClientError(f"no SUBACK for {filters} within {TIMEOUT} s")
            return self._acks.pop(mid)

    def watch(self, thing: str, stream_id: str, *, qos: int = 0, require_grant: bool = True) -> StreamProbe:
        """A probe of (thing, stream): subscribed to its description/data/rejected topics in CBOR and JSON.

        The SUBACK's reason codes are kept in ``probe.granted``; with ``require_grant`` a refusal raises.
        """
        probe = StreamProbe(self, thing, stream_id)
        with self._lock:
            self._probes[(thing, stream_id)] = probe
        filters = [probe.topic(op, "+") for op in ANSWER_OPERATIONS]
        probe.granted = self.subscribe(*filters, qos=qos)
        if require_grant and any(code.is_failure for code in probe.granted):
            raise ClientError(f"the broker refused {filters}: {probe.granted}")
        return probe

    # -- publishing -----------------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        """Publish raw bytes at QoS 0 (as the AWS device libraries do); by default wait until they are written.

        Use ``wait=False`` for a publish the broker may answer by closing the connection.
        """
        info = self._mqtt.publish(topic, payload, qos=0)
        if not wait:  # paho's network thread may already have written it and lost the connection (info.rc)
            return
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ClientError(f"PUBLISH to {topic} failed: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(timeout=TIMEOUT)
        except RuntimeError as exc:  # paho: the connection was lost before the bytes were written
            raise ClientError(f"PUBLISH to {topic} failed: {exc}") from exc

    def close(self) -> None:
        self._mqtt.disconnect()
        self._mqtt.loop_stop()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho callbacks (network thread) --------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, code: ReasonCode, props: Any) -> None:
        self._connected.put(code)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, code: ReasonCode, props: Any) -> None:
        self.disconnects.put(code)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any) -> None:
        with self._acked:
            self._acks[mid] = list(codes)
            self._acked.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        parts = topic.split("/")
        # $aws things <thing> streams <stream> <operation> <format>
        known = len(parts) == 7 and topic.startswith(_PREFIX) and parts[3] == "streams"
        answer = Answer(
            topic=topic,
            payload=bytes(message.payload),
            operation=parts[5] if known else "",
            format=parts[6] if known else "",
            qos=message.qos,
        )
        with self._lock:
            probe = self._probes.get((parts[2], parts[4])) if known else None
        (probe.inbox if probe is not None else self.unrouted).put(answer)


# ------------------------------------------------------------------------------------------------ CBOR by hand


def cbor_map(pairs: list[tuple[Any, Any]] | dict[Any, Any], *, indefinite: bool = False) -> bytes:
    """A CBOR map of ``pairs`` in the given order: definite (``a0+n``) or indefinite (``bf ... ff``).

    Keys and values are encoded by cbor2 one item at a time; a value of type ``bytes`` given as ``Raw`` is copied
    verbatim, so a test can put a hand-made item (e.g. a non-shortest integer) into a map.
    """
    items = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
    body = b"".join(_item(k) + _item(v) for k, v in items)
    if indefinite:
        return b"\xbf" + body + b"\xff"
    count = len(items)
    head = bytes([0xA0 + count]) if count < 24 else b"\xb8" + bytes([count])
    return head + body


class Raw(bytes):
    """Bytes that ``cbor_map`` copies verbatim as one already-encoded CBOR item."""


def _item(value: Any) -> bytes:
    return bytes(value) if isinstance(value, Raw) else cbor2.dumps(value)


def cbor_top_keys(payload: bytes) -> tuple[bool, list[Any]]:
    """(indefinite?, keys in wire order) of the top-level CBOR map in ``payload``, read from the bytes.

    Walks the items itself (cbor2 decodes each key and skips each value) so the order is the wire's, not a dict's.
    """
    indefinite = payload[0] == 0xBF
    if not indefinite and payload[0] >> 5 != 5:
        raise ValueError(f"not a CBOR map: first byte {payload[0]:#04x}")
    pos, count = (1, None) if indefinite else _head(payload, 0)
    keys: list[Any] = []
    while (payload[pos] != 0xFF) if indefinite else (len(keys) < (count or 0)):
        end = _skip(payload, pos)
        keys.append(cbor2.loads(payload[pos:end]))
        pos = _skip(payload, end)
    if indefinite:
        pos += 1
    if pos != len(payload):
        raise ValueError(f"{len(payload) - pos} byte(s) after the map")
    return indefinite, keys


def _head(data: bytes, pos: int) -> tuple[int, int]:
    """(position after the head, argument) of the item head at ``pos``."""
    info = data[pos] & 0x1F
    if info < 24:
        return pos + 1, info
    width = {24: 1, 25: 2, 26: 4, 27: 8}[info]
    return pos + 1 + width, int.from_bytes(data[pos + 1 : pos + 1 + width], "big")


def _skip(data: bytes, pos: int) -> int:
    """Position after the (definite-length, untagged-or-tagged) item at ``pos``; enough for the service's answers."""
    major = data[pos] >> 5
    if data[pos] & 0x1F == 31:  # indefinite map/array/string: items until the break
        pos += 1
        while data[pos] != 0xFF:
            pos = _skip(data, pos)
        return pos + 1
    after, arg = _head(data, pos)
    if major in (2, 3):
        return after + arg
    if major == 4:
        for _ in range(arg):
            after = _skip(data, after)
        return after
    if major == 5:
        for _ in range(2 * arg):
            after = _skip(data, after)
        return after
    if major == 6:
        return _skip(data, after)
    return after


# ------------------------------------------------------------------------------------------- requests, answers


def encode(fmt: str, doc: Any) -> bytes:
    """A request document as CBOR (cbor2: ints as CBOR ints, bytes as byte strings) or compact JSON."""
    return cbor2.dumps(doc) if fmt == "cbor" else json.dumps(doc, separators=(",", ":")).encode()


def expect_rejection(answer: Answer, *, fmt: str, code: str, token: str | None = None) -> str:
    """Assert ``answer`` is exactly a rejection with ``code`` (and ``token`` echoed, or none); returns its message.

    docs/protocol.md 3: ``o``/``code`` and ``m``/``message`` always, ``c``/``clientToken`` only for a sent valid token,
    nothing else; CBOR answers are indefinite-length maps.
    """
    assert (answer.operation, answer.format) == ("rejected", fmt), f"{answer.topic}: {answer.payload[:200]!r}"
    doc = answer.doc
    message = doc.get("m")
    expected = {"code": code, "o": code, "message": message, "m": message}
    if token is not None:
        expected |= {"clientToken": token, "c": token}
    assert doc == expected, f"expected {code} (token {token!r}), got {doc}"
    assert isinstance(message, str) and message, f"empty message in {doc}"
    if fmt == "cbor":
        assert cbor_top_keys(answer.payload)[0], "CBOR rejection is not an indefinite-length map"
    return message


def expect_blocks(
    answers: list[Answer],
    *,
    fmt: str,
    data: bytes,
    block_size: int,
    indices: list[int],
    file_id: int = 0,
    token: str | None = None,
) -> None:
    """Assert ``answers`` are exactly the data messages of blocks ``indices`` (absolute, in this order) of ``data``.

    Per docs/protocol.md 3: keys c?, f, i, l, p; ``l`` = this block's length (the last block is the remainder);
    CBOR: an indefinite-length map with keys in the order c, f, i, l, p and ``p`` a byte string; JSON: ``p``
    standard Base64 with padding.
    """
    got = [(a.operation, a.format, a.doc.get("i")) for a in answers]
    assert got == [("data", fmt, i) for i in indices], f"expected blocks {indices}, got {got}"
    keys = (["c"] if token is not None else []) + ["f", "i", "l", "p"]
    for answer, index in zip(answers, indices, strict=True):
        chunk = data[index * block_size : (index + 1) * block_size]
        doc = answer.doc
        if fmt == "cbor":
            assert cbor_top_keys(answer.payload) == (True, keys), f"block {index}: {answer.payload[:16].hex()}"
            payload = doc["p"]
            assert type(payload) is bytes, f"block {index}: p is {type(payload).__name__}, not a byte string"
        else:
            assert sorted(doc) == sorted(keys), f"block {index}: keys {list(doc)}"
            assert doc["p"] == base64.b64encode(chunk).decode("ascii"), f"block {index}: p is not padded Base64"
            payload = base64.b64decode(doc["p"], validate=True)
        expected = {"f": file_id, "i": index, "l": len(chunk), "p": payload}
        if token is not None:
            expected["c"] = token
        assert doc | {"p": payload} == expected, f"block {index}: {dict(doc, p=len(payload))}"
        assert payload == chunk, f"block {index}: wrong bytes"
