"""MQTT transport benchmark: what one publish and one received message cost the asyncio event loop.

Run: ``.venv/bin/python bench/bench_transport.py [--quick] [--protocol mqtt5|mqtt311|both] [--rounds 3]``.

A private mosquitto (plain TCP, free port) and one ``MqttTransport`` (``--flow-control none`` unless said):
- publish, awaited: ``await mqtt.publish(topic, 100 B)`` one after the other, QoS 0;
- publish, task each: two ``mqtt.publish`` coroutines at a time, gathered (the device's requests, before);
- publish, nowait: ``mqtt.publish_nowait`` (QoS 0, nothing to await, no completion hop), when the transport has it;
- publish, nowait + on_done: with a completion callback in the loop (the device's requests now: "sent" reports);
- publish, aws pacing: with ``--flow-control aws`` (100/s): only the loop's CPU per publish matters;
- receive: a raw-socket MQTT 3.1.1 publisher (another thread, TCP_NODELAY, one write) sends a burst; messages/s
  from the first to the last message received, and the loop's CPU per message.
"loop CPU" is ``time.thread_time()`` of the event loop's thread over the run (awscrt's own threads excluded), so
it is the cost the device's event loop pays, whatever else the shared machine is doing; "process CPU" adds
awscrt's threads (the raw sender's own share is subtracted). Best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_sim.transport import FlowControl, MqttProtocol, MqttTransport, TransportSettings
from local_iot.broker import BrokerConfig, MosquittoBroker

TOPIC = "$aws/things/bench/streams/fw/get/cbor"
DATA = "$aws/things/bench/streams/fw/data/cbor"


def settings(broker: MosquittoBroker, protocol: MqttProtocol, flow: FlowControl) -> TransportSettings:
    return TransportSettings(
        endpoint=broker.host,
        port=broker.mqtt_port,
        no_tls=True,
        client_id="bench",
        protocol=protocol,
        flow_control=flow,
    )


async def timed(body: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    """(wall seconds, loop-thread CPU seconds, operations) of one run of ``body``."""
    cpu, wall = time.thread_time(), time.perf_counter()
    count = await body()
    return time.perf_counter() - wall, time.thread_time() - cpu, count


async def publish_runs(
    broker: MosquittoBroker, protocol: MqttProtocol, count: int, flow: FlowControl
) -> dict[str, tuple[float, float, int]]:
    payload = bytes(100)
    out: dict[str, tuple[float, float, int]] = {}
    async with MqttTransport(settings(broker, protocol, flow), on_message=lambda t, p: None) as mqtt:

        async def awaited() -> int:
            for _ in range(count):
                await mqtt.publish(TOPIC, payload)
            return count

        async def tasks() -> int:  # the device before: a task per request, two requests in flight
            for _ in range(count // 2):
                await asyncio.gather(mqtt.publish(TOPIC, payload), mqtt.publish(TOPIC, payload))
            return count // 2 * 2

        async def nowait(report: bool) -> int:
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            left = count

            def on_done(error: object) -> None:
                nonlocal left
                left -= 1
                if not left:
                    done.set_result(None)

            send = mqtt.publish_nowait  # type: ignore[attr-defined]
            for _ in range(count):
                if report:
                    send(TOPIC, payload, on_done=on_done)
                else:
                    send(TOPIC, payload)
            if report:
                await done
            else:
                await mqtt.publish(TOPIC, payload)  # one awaited publish behind them: all are written
            return count

        nowait_here = hasattr(mqtt, "publish_nowait")
        if flow is FlowControl.AWS:
            out["aws pacing, awaited"] = await timed(awaited)
            if nowait_here:
                out["aws pacing, on_done"] = await timed(lambda: nowait(True))
            return out
        await mqtt.publish(TOPIC, payload)  # warm up
        out["awaited"] = await timed(awaited)
        out["task each, 2 at once"] = await timed(tasks)
        if nowait_here:
            out["nowait"] = await timed(lambda: nowait(False))
            out["nowait, on_done"] = await timed(lambda: nowait(True))
    return out


def raw_burst(host: str, port: int, messages: int, size: int) -> None:
    def packet(header: int, body: bytes) -> bytes:
        n, length = len(body), bytearray()
        while True:
            n, digit = divmod(n, 128)
            length.append(digit | (0x80 if n else 0))
            if not n:
                return bytes([header]) + bytes(length) + body

    def string(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    connect = packet(0x10, string(b"MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + string(b"raw-pub"))
    one = packet(0x30, string(DATA.encode()) + bytes(size))
    with socket.create_connection((host, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect)
        assert s.recv(4) == b"\x20\x02\x00\x00"
        s.sendall(one * messages + b"\xe0\x00")


async def receive_run(
    broker: MosquittoBroker, protocol: MqttProtocol, count: int, size: int
) -> tuple[float, float, float]:
    """(messages/s first to last, loop CPU and process CPU (awscrt's threads included) microseconds per message)."""
    got = 0
    first = last = 0.0
    done = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        nonlocal got, first, last
        got += 1
        last = time.perf_counter()
        if got == 1:
            first = last
        if got == count:
            done.set()

    async with MqttTransport(settings(broker, protocol, FlowControl.NONE), on_message=on_message) as mqtt:
        await mqtt.subscribe([DATA])
        cpu, process = time.thread_time(), time.process_time()
        sender = threading.Thread(target=raw_burst, args=(broker.host, broker.mqtt_port, count, size))
        sender.start()
        await asyncio.wait_for(done.wait(), 120)
        cpu, process = time.thread_time() - cpu, time.process_time() - process
        sender.join()
    # the sender thread's own CPU (building and writing the burst) is in process_time too; measured apart below
    return (count - 1) / (last - first), cpu / count * 1e6, process / count * 1e6


def sender_cost(count: int, size: int) -> float:
    """CPU microseconds per message the raw sender itself spends building its burst (subtracted)."""
    started = time.process_time()
    for _ in range(3):
        (b"x" * (size + 50)) * count
    return (time.process_time() - started) / 3 / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--protocol", choices=["mqtt5", "mqtt311", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    protocols = [MqttProtocol.MQTT5, MqttProtocol.MQTT311] if args.protocol == "both" else [MqttProtocol(args.protocol)]
    publishes = 1000 if args.quick else 5000
    bursts = [(5000, 256), (2000, 4096)] if args.quick else [(20000, 256), (20000, 4096)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        MosquittoBroker(
            BrokerConfig(state_dir=Path(tmp), tls_port=None, max_queued_messages=0)  # raw floods: no per-client cap
        ) as b,
    ):
        for protocol in protocols:
            print(f"\n{protocol.value}: publishes of 100 B, QoS 0 (best of {args.rounds})")
            print(f"{'mode':>22} {'publishes/s':>12} {'loop CPU us/publish':>20}")
            best: dict[str, tuple[float, float]] = {}
            for _ in range(args.rounds):
                runs = asyncio.run(publish_runs(b, protocol, publishes, FlowControl.NONE))
                runs |= asyncio.run(publish_runs(b, protocol, 200 if args.quick else 300, FlowControl.AWS))
                for mode, (wall, cpu, n) in runs.items():
                    rate, cost = n / wall, cpu / n * 1e6
                    old = best.get(mode)
                    best[mode] = (max(rate, old[0]), min(cost, old[1])) if old else (rate, cost)
            for mode, (rate, cost) in best.items():
                print(f"{mode:>22} {rate:>12,.0f} {cost:>20.1f}")
            print(f"{protocol.value}: receive, raw burst (best of {args.rounds})")
            print(f"{'messages':>10} {'size':>6} {'msg/s':>10} {'loop CPU us/msg':>16} {'process CPU us/msg':>19}")
            for count, size in bursts:
                results = [asyncio.run(receive_run(b, protocol, count, size)) for _ in range(args.rounds)]
                rate = max(r[0] for r in results)
                cost = min(r[1] for r in results)
                total = min(r[2] for r in results) - sender_cost(count, size)
                print(f"{count:>10} {size:>6} {rate:>10,.0f} {cost:>16.1f} {total:>19.1f}")


if __name__ == "__main__":
    main()
