"""AWS paces one connection's answers to 512 KiB/s (the excess is delayed, not dropped). A block that big arrives
whole once the shaper let it through, after a silence the idle timer must not take for a loss."""

from __future__ import annotations

import pytest

from device_sim.engine.machine import DownloadEngine, EngineSettings, EngineUsageError
from device_sim.protocol import DataBlock
from device_sim.protocol.limits import CONNECTION_BYTES_PER_SECOND

BIG = 128 * 1024
FILE = bytes(i % 251 for i in range(4 * BIG))


def _engine(block_size: int, **settings: object) -> DownloadEngine:
    return DownloadEngine(
        file_id=0,
        file_size=len(FILE),
        stream_version=1,
        now=0.0,
        settings=EngineSettings(block_size=block_size, client_token="t", **settings),  # type: ignore[arg-type]
    )


def _block(index: int, size: int) -> DataBlock:
    payload = FILE[index * size : (index + 1) * size]
    return DataBlock(file_id=0, block_index=index, block_length=len(payload), payload=payload, client_token="t")


def _paced_run(engine: DownloadEngine, *, rtt: float, block_size: int) -> None:
    """One request at a time; every answer after the first waits one block's worth of quota in the shaper."""
    now = 0.0
    engine.start(now)
    engine.next_actions()
    for index in range(len(FILE) // block_size):
        arrival = now + rtt + (block_size / CONNECTION_BYTES_PER_SECOND if index else 0.0)
        timer = engine.get_timer()
        assert timer is not None
        if timer <= arrival:
            engine.handle_timer(timer)  # expired before the paced answer came: a spurious re-request
        engine.receive_block(_block(index, block_size), arrival)
        engine.next_actions()
        now = arrival


def test_paced_128_kib_answers_are_waited_for() -> None:
    engine = _engine(BIG)
    _paced_run(engine, rtt=0.04, block_size=BIG)
    stats = engine.stats
    assert stats.timeouts == 0 and stats.duplicates == 0 and stats.requests_sent == 4


def test_without_the_allowance_the_same_answers_time_out() -> None:
    engine = _engine(BIG, answer_rate=None)  # what the engine did before: 250 ms of pacing > the 0.2 s floor
    _paced_run(engine, rtt=0.04, block_size=BIG)
    assert engine.stats.timeouts >= 1


def test_the_allowance_is_one_block_of_quota() -> None:
    small, paced = _engine(4096, answer_rate=None), _engine(4096)
    for engine in (small, paced):
        engine.start(0.0)
        engine.next_actions()
    before, after = small.get_timer(), paced.get_timer()
    assert before is not None and after is not None
    assert after - before == pytest.approx(4096 / CONNECTION_BYTES_PER_SECOND)  # 8 ms: a lost 4 KiB tail costs little


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_a_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(EngineUsageError, match="answer_rate"):
        EngineSettings(answer_rate=rate)
