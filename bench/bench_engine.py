"""Download engine benchmark: CPU cost per block, and virtual download time on a lossy link.

Run: ``.venv/bin/python bench/bench_engine.py [--quick]``.

1. CPU: the engine alone, every request answered at once and in order (no codec, no network): how many
   blocks per second one core can push through ``receive_block`` + ``next_actions``.
2. Loss: 1 MiB in 4 KiB blocks over the in-memory link of the unit tests (virtual clock, 50 ms round trip,
   100 Mbit/s, a share of every message lost both ways), adaptive idle timer against a fixed 10 s timeout
   (the FreeRTOS OTA agent's behaviour). Reports virtual seconds and round trips per 32-block window.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_sim.engine import DownloadEngine, EngineSettings, SendRequest
from device_sim.protocol import DataBlock, decode_bitmap
from device_sim.protocol.limits import block_length
from tests.unit.fakes_service import FakeStreamService, Faults, LinkSimulation


def cpu_blocks_per_second(file_size: int, block_size: int, inflight: int) -> float:
    payloads = {n: bytes(n) for n in {block_size, block_length(file_size, block_size, file_size // block_size)}}
    settings = EngineSettings(block_size=block_size, inflight=inflight)
    engine = DownloadEngine(file_id=0, file_size=file_size, stream_version=1, now=0.0, settings=settings)
    started = time.perf_counter()
    engine.start(0.0)
    pending = [a for a in engine.next_actions() if isinstance(a, SendRequest)]
    now = 0.0
    while pending:
        request = pending.pop(0).request
        assert request.bitmap is not None
        for index in decode_bitmap(request.bitmap, request.offset):
            length = block_length(file_size, block_size, index)
            block = DataBlock(file_id=0, block_index=index, block_length=length, payload=payload_of(payloads, length))
            now += 1e-6
            engine.receive_block(block, now)
            pending.extend(a for a in engine.next_actions() if isinstance(a, SendRequest))
    elapsed = time.perf_counter() - started
    assert engine.blocks_have == engine.total_blocks
    return engine.total_blocks / elapsed


def payload_of(payloads: dict[int, bytes], length: int) -> bytes:
    payload = payloads.get(length)
    if payload is None:
        payload = payloads[length] = bytes(length)
    return payload


def lossy(loss: float, settings: EngineSettings, seeds: int) -> tuple[float, float]:
    """Median virtual seconds and round trips per window for 1 MiB at 4 KiB over a 50 ms link."""
    content = random.Random(0).randbytes(1 << 20)
    rtt, windows = 0.05, (1 << 20) // (32 * 4096)
    faults = Faults(drop=loss, latency=rtt / 2, per_block=4096 / 12.5e6)
    elapsed = []
    for seed in range(seeds):
        sim = LinkSimulation(
            FakeStreamService({1: content}), file_id=1, settings=settings, faults=faults, rng=random.Random(seed)
        )
        out = sim.run(max_steps=10**6)
        assert out.data == content, out.failure
        elapsed.append(out.elapsed)
    median = statistics.median(elapsed)
    return median, median / rtt / windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files and fewer seeds")
    args = parser.parse_args()
    print("engine CPU cost (in-order answers, no codec):")
    print(f"{'file':>10} {'block':>7} {'inflight':>8} {'blocks/s':>12}")
    cases = [(24 * 1024 * 1024, 256), (16 * 1024 * 1024, 4096), (16 * 1024 * 1024, 131072)]
    if args.quick:
        cases = [(4 * 1024 * 1024, 256), (4 * 1024 * 1024, 4096)]
    for size, block in cases:
        for inflight in (1, 4):
            rate = cpu_blocks_per_second(size, block, inflight)
            print(f"{size >> 20:>8}Mi {block:>7} {inflight:>8} {rate:>12,.0f}")
    seeds = 5 if args.quick else 30
    print(f"\n1 MiB at 4 KiB, 50 ms RTT, median of {seeds} seeds (virtual time):")
    print(f"{'loss':>5} {'timer':>14} {'inflight':>8} {'seconds':>9} {'RTT/window':>11}")
    for loss in (0.0, 0.05, 0.15, 0.3):
        for label, timeout in (("adaptive", None), ("fixed 10 s", 10.0)):
            for inflight in (1, 2):
                settings = EngineSettings(inflight=inflight, request_timeout=timeout)
                seconds, per_window = lossy(loss, settings, seeds if timeout is None else max(3, seeds // 5))
                print(f"{loss:>5.0%} {label:>14} {inflight:>8} {seconds:>9.2f} {per_window:>11.1f}")


if __name__ == "__main__":
    main()
