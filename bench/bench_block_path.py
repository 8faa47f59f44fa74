"""A data block's CPU on the device's event loop, stage by stage: the general path beside the hot path, same run.

Run: ``.venv/bin/python bench/bench_block_path.py [--rounds 5] [--blocks 256]``.

Both paths are in the code: ``Device._on_messages`` hands a run of data messages to ``FileDownload.receive_data``
(the hot path), which falls back to the general one (``decode_data_block`` -> ``engine.receive_block`` -> a
``WriteBlock`` action -> the sink, the timer followed after every block) for anything else. Each stage is timed
alone, over a file of ``--blocks`` 4 KiB blocks delivered in order, every request answered at once, best of
``--rounds``:

- decode: ``decode_data_block`` (the general decoder's fast path) vs ``DataLayout.full_block``;
- engine: ``receive_block`` + ``next_actions`` + ``get_timer`` per block vs ``receive_data`` + ``has_actions``,
  with ``next_actions``/``get_timer`` only when there are actions or ``deadline_epoch`` moved (requests included);
- storage: ``DigestSink.write`` + the per-block CRC-32 vs ``ReferenceSink.write`` (a memcmp with the S3 object);
- meter: ``MessageMeter.received`` + ``ProgressSampler.add`` (the same code on both paths, for scale).

These are the stages that run for every block; the rest of the event loop's time per block in a fleet (the hop from
awscrt's thread, requests and their completions, asyncio's own turns and wake-ups) is in ``bench_fleet.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_sim.device.meters import MessageMeter, ProgressSampler
from device_sim.engine.machine import DownloadEngine, EngineSettings, SendRequest, WriteBlock
from device_sim.protocol import DataBlock, DataLayout, Format, decode_bitmap, decode_data_block
from device_sim.protocol._service import encode_data_block
from device_sim.sinks import DigestSink, ReferenceSink

BLOCK = 4096
TOKEN = "g2"
TOPIC = "$aws/things/thing-00001/streams/fleet-stream/data/cbor"


def best_us(run: Callable[[], int], rounds: int) -> float:
    """Microseconds per block of ``run`` (which returns how many blocks it handled), best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        blocks = run()
        best = min(best, (time.thread_time() - started) / blocks * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=40, help="files per round")
    args = parser.parse_args()
    n, repeat = args.blocks, args.repeat
    data = os.urandom(n * BLOCK)
    sha = hashlib.sha256(data).hexdigest()
    chunks = [data[i * BLOCK : (i + 1) * BLOCK] for i in range(n)]
    messages = [encode_data_block(Format.CBOR, 0, i, chunks[i], TOKEN) for i in range(n)]
    layout = DataLayout(TOKEN, 0, BLOCK)
    settings = EngineSettings(block_size=BLOCK, client_token=TOKEN)

    def decode_general() -> int:
        for _ in range(repeat):
            for m in messages:
                decode_data_block(m, Format.CBOR)
        return n * repeat

    def decode_hot() -> int:
        for _ in range(repeat):
            for m in messages:
                layout.full_block(m)
        return n * repeat

    def asked(engine: DownloadEngine, actions: list[object]) -> list[int]:
        out: list[int] = []
        for action in actions:
            if isinstance(action, SendRequest):
                request = action.request
                assert request.bitmap is not None
                out.extend(decode_bitmap(request.bitmap, request.offset))
        return out

    def engine_general() -> int:
        for _ in range(repeat):
            engine = DownloadEngine(file_id=0, file_size=len(data), stream_version=1, now=0.0, settings=settings)
            engine.start(0.0)
            queue = asked(engine, engine.next_actions())
            now = 0.0
            while queue:
                index = queue.pop(0)
                now += 1e-5
                payload = chunks[index]
                block = DataBlock(client_token=TOKEN, file_id=0, block_index=index, block_length=BLOCK, payload=payload)
                engine.receive_block(block, now)
                actions = engine.next_actions()
                queue += asked(engine, [a for a in actions if not isinstance(a, WriteBlock)])
                engine.get_timer()
        return n * repeat

    def engine_hot() -> int:
        for _ in range(repeat):
            engine = DownloadEngine(file_id=0, file_size=len(data), stream_version=1, now=0.0, settings=settings)
            engine.start(0.0)
            queue = asked(engine, engine.next_actions())
            armed = engine.deadline_epoch
            engine.get_timer()
            now = 0.0
            while queue:
                index = queue.pop(0)
                now += 1e-5
                engine.receive_data(index, chunks[index], now)
                if engine.has_actions or engine.deadline_epoch != armed:
                    queue += asked(engine, engine.next_actions())
                    armed = engine.deadline_epoch
                    engine.get_timer()
        return n * repeat

    def storage_general() -> int:
        for _ in range(repeat):
            sink = DigestSink(len(data), BLOCK)
            crcs = [0] * n
            for i, chunk in enumerate(chunks):
                sink.write(i, i * BLOCK, chunk)
                crcs[i] = zlib.crc32(chunk)
            sink.finish()
        return n * repeat

    def storage_hot() -> int:
        for _ in range(repeat):
            sink = ReferenceSink(data, sha, BLOCK)
            for i, chunk in enumerate(chunks):
                sink.write(i, i * BLOCK, chunk)
            sink.finish()
        return n * repeat

    def meter() -> int:
        for _ in range(repeat):
            m, p = MessageMeter(), ProgressSampler()
            for i, message in enumerate(messages):
                m.received(len(message), len(TOPIC))
                p.add(i * 1e-4, i * BLOCK)
        return n * repeat

    rows = [
        ("decode", best_us(decode_general, args.rounds), best_us(decode_hot, args.rounds)),
        ("engine (+ requests, timer)", best_us(engine_general, args.rounds), best_us(engine_hot, args.rounds)),
        ("storage (digest + CRC / compare)", best_us(storage_general, args.rounds), best_us(storage_hot, args.rounds)),
    ]
    meter_us = best_us(meter, args.rounds)
    load = os.getloadavg()[0]
    print(f"per 4 KiB block, CPU us of the event loop's thread, best of {args.rounds}; load average {load:.1f}")
    print(f"{'stage':<34} {'general path':>13} {'hot path':>10} {'saved':>7}")
    for name, general, hot in rows:
        print(f"{name:<34} {general:>13.2f} {hot:>10.2f} {general - hot:>7.2f}")
    total_general = sum(r[1] for r in rows) + meter_us
    total_hot = sum(r[2] for r in rows) + meter_us
    print(f"{'meter + progress (both)':<34} {meter_us:>13.2f} {meter_us:>10.2f} {0.0:>7.2f}")
    print(f"{'sum of the stages':<34} {total_general:>13.2f} {total_hot:>10.2f} {total_general - total_hot:>7.2f}")


if __name__ == "__main__":
    main()
