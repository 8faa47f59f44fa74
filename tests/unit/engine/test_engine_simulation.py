"""The engine against the in-memory service over a virtual-clock link: happy path and loss recovery."""

from __future__ import annotations

import random

import pytest

from device_sim.engine.machine import EngineSettings, EngineState
from tests.support.fakes_service import FakeStreamService, Faults, LinkSimulation, Outcome


def _run(content: bytes, settings: EngineSettings, faults: Faults, seed: int = 1) -> Outcome:
    service = FakeStreamService({7: content})
    sim = LinkSimulation(service, file_id=7, settings=settings, faults=faults, rng=random.Random(seed))
    return sim.run(max_steps=200_000)


@pytest.mark.parametrize("inflight", [1, 2, 4])
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 1 << 20])
def test_clean_link_downloads_exactly_the_file(size: int, inflight: int) -> None:
    content = random.Random(size).randbytes(size)
    out = _run(content, EngineSettings(inflight=inflight), Faults())
    assert out.state is EngineState.COMPLETE
    assert out.data == content
    assert out.violations == []
    blocks = -(-size // 4096)
    assert out.stats.blocks_received == blocks
    assert out.stats.requests_sent == -(-blocks // 32)
    assert out.stats.duplicates == out.stats.timeouts == out.stats.re_requests == 0


RTT = 0.05  # virtual round trip: 25 ms each way
LOSSY = Faults(drop=0.15, latency=RTT / 2, per_block=4096 / 12.5e6)  # 15 % of every message lost, 100 Mbit/s
MIB = random.Random(0).randbytes(1 << 20)
WINDOWS = (1 << 20) // (32 * 4096)  # 8 windows of 32 blocks of 4 KiB


def _round_trips_per_window(settings: EngineSettings, seeds: range) -> list[float]:
    per_window = []
    for seed in seeds:
        out = _run(MIB, settings, LOSSY, seed)
        assert out.state is EngineState.COMPLETE and out.data == MIB and out.violations == []
        per_window.append(out.elapsed / RTT / WINDOWS)
    return sorted(per_window)


def test_fifteen_percent_loss_costs_a_few_round_trips_per_window() -> None:
    """1 MiB over a 50 ms link losing 15 % of messages both ways (so most windows lose blocks, and some
    requests are lost outright). The idle timer follows the round trip, so a loss costs about one timeout
    of max(0.1 s, SRTT + 4 RTTVAR) plus one round trip, not the FreeRTOS agent's fixed 10 s."""
    per_window = _round_trips_per_window(EngineSettings(), range(20))
    median = per_window[len(per_window) // 2]
    # Loss-free, one window takes one round trip (plus 32 blocks of transmission, ~0.2 RTT).
    assert median <= 6, per_window
    assert per_window[-1] <= 12, per_window  # the worst of 20 schedules (an unlucky start costs 1 s timeouts)
    two = _round_trips_per_window(EngineSettings(inflight=2), range(20))
    assert two[len(two) // 2] <= 4, two  # a second request in flight hides most of the waiting


def test_a_fixed_ten_second_timeout_is_what_makes_lossy_links_slow() -> None:
    """The same link with the FreeRTOS agent's behaviour (a fixed 10 s timeout, nothing else) as the baseline."""
    adaptive = _round_trips_per_window(EngineSettings(), range(5))
    fixed = _round_trips_per_window(EngineSettings(request_timeout=10.0, fast_retry=False), range(5))
    assert fixed[0] >= 100  # every loss waits 10 s = 200 round trips
    assert fixed[len(fixed) // 2] > 20 * adaptive[len(adaptive) // 2]
