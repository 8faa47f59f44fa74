"""The engine against the in-memory service over a virtual-clock link: happy path and loss recovery."""

from __future__ import annotations

import random

import pytest

from device_sim.engine import EngineSettings, EngineState

from .fakes_service import FakeStreamService, Faults, LinkSimulation


def _run(content: bytes, settings: EngineSettings, faults: Faults, seed: int = 1):
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
