"""Download engine benchmark: CPU cost per block, and virtual download time and duplicates on hostile links.

Run: ``.venv/bin/python bench/bench_engine.py [--quick] [--only cpu,loss,reorder,late,quota,hiccup,busy]``.

1. cpu: the engine alone, every request answered at once and in order (no codec, no network): how many blocks
   per second one core can push through ``receive_block`` + ``next_actions``.
2. loss: 1 MiB in 4 KiB blocks over the in-memory link of the unit tests (virtual clock, 50 ms round trip,
   100 Mbit/s, a share of every message lost both ways), 1 and 2 requests in flight: the engine as configured
   (fast re-request on), without fast re-request, and a fixed 10 s timeout without it (the FreeRTOS OTA agent).
3. reorder: the same link, each block moved behind a random later block of its answer with probability 0.3
   (local_iot's ``reorder`` fault), with and without 15 % loss: what fast re-request costs in duplicates.
4. late: a fifth of the blocks come 150 ms late (overtaken by the rest of their answer): fast re-requests that
   prove spurious, and how the reordering window learns to wait longer.
5. quota: AWS's per-connection pacing (512 KiB/s, in order, answers queue behind earlier answers), 100 ms round
   trip, 4 MiB in 32 KiB blocks, 1-3 requests in flight, 0 and 5 % loss: fraction of the 512 KiB/s ceiling.
6. hiccup: a loss-free 100 or 300 ms round trip where 5 % of the messages are held 30 ms (and everything behind
   them): the spurious timeouts of the idle-timeout rule (every timeout here is spurious).
7. busy: a loaded service or event loop: 2 % of the messages held 0.5 s (and everything behind them), no loss:
   every timeout is spurious, and the engine learns from the duplicates that prove it.
Each row: median over seeds of virtual seconds, and mean duplicates, timeouts and fast re-requests per run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_sim.engine.machine import DownloadEngine, EngineSettings, SendRequest
from device_sim.protocol import DataBlock, decode_bitmap
from device_sim.protocol.limits import block_length
from tests.support.fakes_service import FakeStreamService, Faults, LinkSimulation

HAS_FAST_RETRY = "fast_retry" in {f.name for f in dataclasses.fields(EngineSettings)}


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


def simulate(size: int, settings: EngineSettings, faults: Faults, seeds: int) -> dict[str, float]:
    """Median virtual seconds; mean duplicates, timeouts, fast re-requests and requests per run."""
    content = random.Random(0).randbytes(size)
    runs = []
    for seed in range(seeds):
        sim = LinkSimulation(
            FakeStreamService({1: content}), file_id=1, settings=settings, faults=faults, rng=random.Random(seed)
        )
        out = sim.run(max_steps=10**7)
        assert out.data == content and not out.violations, (out.failure, out.violations[:3])
        runs.append(out)
    return {
        "seconds": statistics.median(o.elapsed for o in runs),
        "duplicates": statistics.mean(o.stats.duplicates for o in runs),
        "timeouts": statistics.mean(o.stats.timeouts for o in runs),
        "fast": statistics.mean(getattr(o.stats, "fast_retries", 0) for o in runs),
        "requests": statistics.mean(o.stats.requests_sent for o in runs),
    }


def settings(**kw: Any) -> EngineSettings:
    # An engine from before fast re-request (a baseline measured from an older tree) has no such setting.
    if not HAS_FAST_RETRY and kw.pop("fast_retry", True) is False:
        raise LookupError("no fast_retry setting")
    return EngineSettings(**kw)


def row(label: str, result: dict[str, float], extra: str = "") -> None:
    r = result
    print(
        f"{label:<34} {r['seconds']:>8.2f} {r['duplicates']:>7.1f} {r['timeouts']:>8.1f} {r['fast']:>6.1f}"
        f" {r['requests']:>8.1f} {extra}"
    )


def header(title: str, extra: str = "") -> None:
    print(f"\n{title}")
    print(f"{'':<34} {'seconds':>8} {'dups':>7} {'timeouts':>8} {'fast':>6} {'requests':>8} {extra}")


def variants(inflight: int) -> list[tuple[str, EngineSettings]]:
    out = [("engine", settings(inflight=inflight))]
    with contextlib.suppress(LookupError):
        out.append(("  no fast re-request", settings(inflight=inflight, fast_retry=False)))
    return out


def bench_loss(seeds: int) -> None:
    rtt, windows = 0.05, (1 << 20) // (32 * 4096)
    header(f"loss: 1 MiB at 4 KiB, 50 ms RTT, median/mean of {seeds} seeds", "RTT/window")
    for loss in (0.0, 0.05, 0.15, 0.3):
        faults = Faults(drop=loss, latency=rtt / 2, per_block=4096 / 12.5e6)
        for inflight in (1, 2):
            for name, s in variants(inflight):
                r = simulate(1 << 20, s, faults, seeds)
                row(f"{loss:.0%} inflight {inflight} {name}", r, f"{r['seconds'] / rtt / windows:>10.1f}")
        if loss:
            try:
                fixed = settings(request_timeout=10.0, fast_retry=False)
            except LookupError:
                fixed = settings(request_timeout=10.0)
            r = simulate(1 << 20, fixed, faults, max(3, seeds // 5))
            row(f"{loss:.0%} inflight 1 fixed 10 s (FreeRTOS)", r, f"{r['seconds'] / rtt / windows:>10.1f}")


def bench_reorder(seeds: int) -> None:
    header(f"reorder: 1 MiB at 4 KiB, 50 ms RTT, reorder 0.3 inside each answer, {seeds} seeds")
    for loss in (0.0, 0.15):
        faults = Faults(drop=loss, reorder=0.3, latency=0.025, per_block=4096 / 12.5e6)
        for inflight in (1, 2):
            for name, s in variants(inflight):
                row(f"loss {loss:.0%} inflight {inflight} {name}", simulate(1 << 20, s, faults, seeds))


def bench_late(seeds: int) -> None:
    header(f"late: 4 MiB at 4 KiB, 50 ms RTT, 20 % of blocks 150 ms late (local_iot's delay fault), {seeds} seeds")
    faults = Faults(late=0.2, late_s=0.15, latency=0.025, per_block=4096 / 12.5e6)
    for inflight in (1, 2):
        for name, s in variants(inflight):
            row(f"inflight {inflight} {name}", simulate(4 << 20, s, faults, seeds))


def bench_quota(seeds: int) -> None:
    size, block = 4 << 20, 32768
    ceiling = 512 * 1024
    header(f"quota: 4 MiB at 32 KiB, 100 ms RTT, answers paced to 512 KiB/s, {seeds} seeds", "of ceiling")
    for loss in (0.0, 0.05):
        faults = Faults(drop=loss, latency=0.05, per_block=block / ceiling)
        for inflight in (1, 2, 3):
            for name, s in variants(inflight):
                s = dataclasses.replace(s, block_size=block)
                r = simulate(size, s, faults, seeds)
                row(f"loss {loss:.0%} inflight {inflight} {name}", r, f"{size / r['seconds'] / ceiling:>10.2f}")


def bench_hiccup(seeds: int) -> None:
    header(f"hiccup: 4 MiB at 4 KiB, no loss, 5 % of messages held 30 ms (and all behind them), {seeds} seeds")
    for rtt in (0.1, 0.3):
        faults = Faults(stall=0.05, stall_s=0.03, latency=rtt / 2, per_block=4096 / 12.5e6)
        for inflight in (1, 2):
            r = simulate(4 << 20, settings(inflight=inflight), faults, seeds)
            row(f"RTT {rtt * 1000:.0f} ms inflight {inflight}", r)


def bench_busy(seeds: int) -> None:
    header(f"busy: 4 MiB at 4 KiB, 50 ms RTT, no loss, 2 % of messages held 0.5 s (and all behind them), {seeds} seeds")
    faults = Faults(stall=0.02, stall_s=0.5, latency=0.025, per_block=4096 / 12.5e6)
    for inflight in (1, 2):
        r = simulate(4 << 20, settings(inflight=inflight), faults, seeds)
        row(f"inflight {inflight}", r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files and fewer seeds")
    parser.add_argument("--only", default="cpu,loss,reorder,late,quota,hiccup,busy")
    args = parser.parse_args()
    only = set(args.only.split(","))
    seeds = 5 if args.quick else 30
    if "cpu" in only:
        print("engine CPU cost (in-order answers, no codec):")
        print(f"{'file':>10} {'block':>7} {'inflight':>8} {'blocks/s':>12}")
        cases = [(24 * 1024 * 1024, 256), (16 * 1024 * 1024, 4096), (16 * 1024 * 1024, 131072)]
        if args.quick:
            cases = [(4 * 1024 * 1024, 256), (4 * 1024 * 1024, 4096)]
        for size, block in cases:
            for inflight in (1, 4):
                rate = cpu_blocks_per_second(size, block, inflight)
                print(f"{size >> 20:>8}Mi {block:>7} {inflight:>8} {rate:>12,.0f}")
    if "loss" in only:
        bench_loss(seeds)
    if "reorder" in only:
        bench_reorder(seeds)
    if "late" in only:
        bench_late(max(3, seeds // 3))
    if "quota" in only:
        bench_quota(max(3, seeds // 3))
    if "hiccup" in only:
        bench_hiccup(seeds)
    if "busy" in only:
        bench_busy(seeds)


if __name__ == "__main__":
    main()
