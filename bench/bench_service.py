"""Stream service throughput through a real mosquitto, beside the raw broker rate for the same message size.

Run: ``.venv/bin/python bench/bench_service.py [--quick] [--sizes 1024,4096] [--format cbor|json]``.

For each block size: (1) raw: one paho publisher (TCP_NODELAY) sends N messages of the size of a data message to
one paho subscriber through the broker, as fast as it can; (2) service: a paho device keeps ``--window`` GetStream
requests in flight (each for 128 KiB of blocks) against ``StreamService`` and counts the data messages. Both rates
are received messages per second at the subscriber/device, measured in the same run. Target: service >= 0.7 x raw
at 4 KiB.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device_sim.protocol import Format, encode_data_block
from device_sim.protocol.limits import MAX_DATA_PER_REQUEST
from local_iot.broker import BrokerConfig, MosquittoBroker
from local_iot.memory_catalog import InMemoryCatalog
from local_iot.service_mqtt import StreamService

FILE_SIZE = 16 * 1024 * 1024
ROLE = "arn:aws:iam::123456789012:role/bench"


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client(broker: MosquittoBroker, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311)
    client.on_socket_open = _nodelay
    client.connect(broker.host, broker.mqtt_port)
    client.loop_start()
    return client


def _subscribe(client: mqtt.Client, topic: str) -> None:
    done = threading.Event()
    client.on_subscribe = lambda *args: done.set()
    client.subscribe(topic, 0)
    if not done.wait(10):
        raise RuntimeError(f"no SUBACK for {topic}")


def raw_rate(broker: MosquittoBroker, size: int, count: int) -> float:
    """Messages/s from one publisher to one subscriber (first publish to last receipt)."""
    topic = "$aws/things/raw/streams/s/data/cbor"
    received = 0
    done = threading.Event()
    last = [0.0]

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if received == count:
            last[0] = time.perf_counter()
            done.set()

    sub = _client(broker, "bench-raw-sub")
    pub = _client(broker, "bench-raw-pub")
    try:
        sub.on_message = on_message
        _subscribe(sub, topic)
        payload = bytes(size)
        start = time.perf_counter()
        for _ in range(count):
            pub.publish(topic, payload, 0)
        if not done.wait(120):
            raise RuntimeError(f"raw: received {received} of {count} messages")
        return count / (last[0] - start)
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()


def service_rate(
    broker: MosquittoBroker, catalog: InMemoryCatalog, block: int, count: int, window: int, fmt: str
) -> float:
    """Data messages/s a device receives with ``window`` requests of 128 KiB in flight."""
    per_request = MAX_DATA_PER_REQUEST // block
    total_blocks = FILE_SIZE // block
    prefix = "$aws/things/bench-dev/streams/bench"
    received = 0
    next_offset = 0
    warm, done = threading.Event(), threading.Event()
    last = [0.0]
    device = _client(broker, "bench-dev")

    def request() -> None:
        nonlocal next_offset
        if next_offset + per_request > total_blocks:
            next_offset = 0
        doc = {"f": 0, "l": block, "o": next_offset, "n": per_request}
        payload = (
            cbor2.dumps(doc) if fmt == "cbor" else (b'{"f":0,"l":%d,"o":%d,"n":%d}' % (block, next_offset, per_request))
        )
        device.publish(f"{prefix}/get/{fmt}", payload, 0)
        next_offset += per_request

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if not warm.is_set():
            if received == per_request:
                warm.set()
        elif received == count:
            last[0] = time.perf_counter()
            done.set()
        elif received % per_request == 0 and received + (window - 1) * per_request < count:
            request()  # one answer complete: keep the window full

    try:
        device.on_message = on_message
        _subscribe(device, f"{prefix}/data/{fmt}")
        with StreamService(catalog, host=broker.host, port=broker.mqtt_port) as service:
            request()  # warm the cache outside the measurement
            if not warm.wait(30):
                raise RuntimeError(f"service: no answer to the warm-up request; {service.stats()}")
            received = 0
            start = time.perf_counter()
            for _ in range(window):
                request()
            if not done.wait(120):
                raise RuntimeError(f"service: received {received} of {count} blocks; {service.stats()}")
            return count / (last[0] - start)
    finally:
        device.disconnect()
        device.loop_stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer messages (less precise)")
    parser.add_argument("--sizes", default="1024,4096,32768,131072", help="block sizes in bytes")
    parser.add_argument("--format", choices=["cbor", "json"], default="cbor")
    parser.add_argument("--window", type=int, default=4, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=3, help="alternate raw/service this many times, keep the best")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    budget_bytes = (16 if args.quick else 96) * 1024 * 1024
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    catalog.put_object("bench", "fw.bin", (bytes(range(256)) * (FILE_SIZE // 256))[:FILE_SIZE])
    catalog.create_stream("bench", [(0, "bench", "fw.bin", None)], ROLE)
    fmt = Format(args.format)
    with (
        tempfile.TemporaryDirectory() as state,
        MosquittoBroker(BrokerConfig(state_dir=Path(state), tls_port=None)) as broker,
    ):
        print(
            f"{'block':>7} {'msg bytes':>9} {'raw msg/s':>10} {'service blk/s':>13} {'ratio':>6} {'service MB/s':>12}"
        )
        for block in sizes:
            count = max(200, min(40000 if not args.quick else 8000, budget_bytes // block))
            count -= count % (MAX_DATA_PER_REQUEST // block)
            msg_size = len(encode_data_block(fmt, 0, 1000, bytes(block)))
            raw = service = 0.0
            for _ in range(args.rounds):
                raw = max(raw, raw_rate(broker, msg_size, count))
                service = max(service, service_rate(broker, catalog, block, count, args.window, args.format))
            print(
                f"{block:>7} {msg_size:>9} {raw:>10.0f} {service:>13.0f} {service / raw:>6.2f}"
                f" {service * block / 1e6:>12.1f}"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
