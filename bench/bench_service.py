"""Stream service throughput through a real mosquitto, beside the raw broker rate for the same message size.

Run: ``.venv/bin/python bench/bench_service.py [--quick] [--sizes 1024,4096] [--format cbor|json]``.

For each block size: (1) raw: one paho publisher (TCP_NODELAY, in a child process) sends N messages of the size of
a data message to one paho subscriber (this process) through the broker, as fast as it can; (2) service: a paho
device (this process) keeps ``--window`` GetStream requests in flight (each for 128 KiB of blocks) against
``StreamService`` (a child process) and counts the data messages. Both rates are received messages per second at
the subscriber/device, measured in the same run, best of ``--rounds``. Target: service >= 0.7 x raw at 4 KiB.
"""

from __future__ import annotations

import argparse
import multiprocessing
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


def _raw_publisher(host: str, port: int, topic: str, size: int, count: int, ready: Any, go: Any) -> None:
    """Child process: one paho publisher (TCP_NODELAY) sends ``count`` messages as fast as it can after ``go``."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-pub", protocol=MQTTProtocolVersion.MQTTv311)
    client.on_socket_open = _nodelay
    client.connect(host, port)
    client.loop_start()
    payload = bytes(size)
    ready.set()
    go.wait()
    info = None
    for _ in range(count):
        info = client.publish(topic, payload, 0)
    if info is not None:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _service_process(host: str, port: int, ready: Any, stop: Any) -> None:
    """Child process: the stream service over an InMemoryCatalog with one 16 MiB file."""
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    catalog.put_object("bench", "fw.bin", (bytes(range(256)) * (FILE_SIZE // 256))[:FILE_SIZE])
    catalog.create_stream("bench", [(0, "bench", "fw.bin", None)], ROLE)
    with StreamService(catalog, host=host, port=port):
        ready.set()
        stop.wait()


def raw_rate(broker: MosquittoBroker, size: int, count: int) -> float:
    """Messages/s from one publisher (another process) to one subscriber (here): go signal to last receipt."""
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

    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    args = (broker.host, broker.mqtt_port, topic, size, count, ready, go)
    publisher = ctx.Process(target=_raw_publisher, args=args)
    sub = _client(broker, "bench-raw-sub")
    try:
        sub.on_message = on_message
        _subscribe(sub, topic)
        publisher.start()
        if not ready.wait(60):  # the child imported paho and connected (not part of the measurement)
            raise RuntimeError("the raw publisher process did not start")
        start = time.perf_counter()
        go.set()
        if not done.wait(120):
            raise RuntimeError(f"raw: received {received} of {count} messages")
        return count / (last[0] - start)
    finally:
        publisher.join(30)
        sub.disconnect()
        sub.loop_stop()


def service_rate(broker: MosquittoBroker, block: int, count: int, window: int, fmt: str) -> float:
    """Data messages/s a device (here) receives with ``window`` requests of 128 KiB in flight."""
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
        request()  # warm the cache outside the measurement
        if not warm.wait(30):
            raise RuntimeError("service: no answer to the warm-up request")
        received = 0
        start = time.perf_counter()
        for _ in range(window):
            request()
        if not done.wait(120):
            raise RuntimeError(f"service: received {received} of {count} blocks")
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
    fmt = Format(args.format)
    ctx = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as state,
        MosquittoBroker(BrokerConfig(state_dir=Path(state), tls_port=None, max_queued_messages=0)) as broker,
    ):
        ready, stop = ctx.Event(), ctx.Event()
        service = ctx.Process(target=_service_process, args=(broker.host, broker.mqtt_port, ready, stop))
        service.start()
        try:
            if not ready.wait(60):
                raise RuntimeError("the stream service process did not start")
            print(f"{'block':>7} {'msg bytes':>9} {'raw msg/s':>10} {'service blk/s':>13} {'ratio':>6} {'MB/s':>7}")
            for block in sizes:
                count = max(200, min(40000 if not args.quick else 8000, budget_bytes // block))
                count -= count % (MAX_DATA_PER_REQUEST // block)
                msg_size = len(encode_data_block(fmt, 0, 1000, bytes(block)))
                raw = served = 0.0
                for _ in range(args.rounds):
                    raw = max(raw, raw_rate(broker, msg_size, count))
                    served = max(served, service_rate(broker, block, count, args.window, args.format))
                print(
                    f"{block:>7} {msg_size:>9} {raw:>10.0f} {served:>13.0f} {served / raw:>6.2f}"
                    f" {served * block / 1e6:>7.1f}"
                )
                sys.stdout.flush()
        finally:
            stop.set()
            service.join(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
