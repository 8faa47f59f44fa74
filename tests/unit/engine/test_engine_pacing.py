"""AWS paces one connection's answers to 512 KiB/s (the excess is delayed, not dropped). A block that big arrives
whole once the shaper let it through, after a silence the idle timer must not take for a loss."""

from __future__ import annotations

import pytest

from device_sim.engine.machine import DownloadEngine, EngineSettings, EngineUsageError, SharedRtt
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


# ---------------------------------------------------------------------------------- spurious idle timeouts


def _one_block_per_request(**settings: object) -> DownloadEngine:
    return DownloadEngine(
        file_id=0,
        file_size=8 * 4096,
        stream_version=1,
        now=0.0,
        settings=EngineSettings(block_size=4096, blocks_per_request=1, answer_rate=None, **settings),  # type: ignore[arg-type]
    )


def _small(index: int) -> DataBlock:
    payload = FILE[index * 4096 : (index + 1) * 4096]
    return DataBlock(file_id=0, block_index=index, block_length=4096, payload=payload)


def _late_answer(engine: DownloadEngine) -> tuple[float, float]:
    """Block 0 answered in 50 ms; block 1's answer takes 500 ms (a loaded service): its idle timer expires first,
    the re-request goes out, the late original arrives, then the re-request's copy. Returns the timeout before
    and after."""
    engine.start(0.0)
    engine.next_actions()
    engine.receive_block(_small(0), 0.05)
    engine.next_actions()
    before = engine.stats.timeout
    timer = engine.get_timer()
    assert timer is not None and timer < 0.55  # expires before the late answer
    engine.handle_timer(timer)
    assert engine.stats.timeouts == 1
    engine.next_actions()
    engine.receive_block(_small(1), 0.55)  # the original answer, late
    engine.receive_block(_small(1), timer + 0.5)  # the re-request's copy
    return before, engine.stats.timeout


def test_a_timeout_proved_spurious_stretches_the_next_ones() -> None:
    engine = _one_block_per_request()
    before, after = _late_answer(engine)
    stats = engine.stats
    assert stats.spurious_timeouts == 1 and stats.duplicates == 1
    assert after == pytest.approx(2 * before)


def test_a_fixed_timeout_is_never_stretched() -> None:
    engine = _one_block_per_request(request_timeout=0.2)
    before, after = _late_answer(engine)
    assert engine.stats.spurious_timeouts == 1 and after == before == 0.2


def test_lost_blocks_come_once_and_never_stretch_the_timer() -> None:
    engine = _one_block_per_request()
    engine.start(0.0)
    engine.next_actions()
    engine.receive_block(_small(0), 0.05)
    engine.next_actions()
    before = engine.stats.timeout
    for _ in range(3):  # block 1 is lost three times, then comes
        timer = engine.get_timer()
        assert timer is not None
        engine.handle_timer(timer)
        engine.next_actions()
    engine.receive_block(_small(1), timer + 0.06)
    assert engine.stats.timeouts == 3 and engine.stats.spurious_timeouts == 0
    assert engine.stats.timeout == pytest.approx(before)


# ------------------------------------------------------------------------------ a fleet's shared knowledge


def _engine_with(shared: SharedRtt | None, **settings: object) -> DownloadEngine:
    return DownloadEngine(
        file_id=0,
        file_size=8 * 4096,
        stream_version=1,
        now=0.0,
        settings=EngineSettings(block_size=4096, blocks_per_request=1, answer_rate=None, **settings),  # type: ignore[arg-type]
        shared=shared,
    )


def _answered(engine: DownloadEngine, rtt: float, blocks: int) -> None:
    engine.start(0.0)
    engine.next_actions()
    now = 0.0
    for index in range(blocks):
        now += rtt
        engine.receive_block(_small(index), now)
        engine.next_actions()


def test_a_device_never_waits_less_than_what_its_fleet_measured() -> None:
    shared = SharedRtt()
    busy = _engine_with(shared)
    _answered(busy, 0.8, 4)  # devices deep in the service's queue see 0.8 s
    quick, alone = _engine_with(shared), _engine_with(None)
    _answered(quick, 0.05, 2)  # this one connected early: its own samples are 50 ms
    _answered(alone, 0.05, 2)
    floor = shared.floor()
    assert floor is not None and floor >= 0.8
    assert alone.stats.timeout == pytest.approx(0.2)  # alone: its own estimate (the 0.2 s floor)
    assert quick.stats.timeout == pytest.approx(floor)  # shared: the fleet's


def test_a_spurious_timeout_anywhere_stretches_the_whole_fleet() -> None:
    shared = SharedRtt()
    victim, other = _engine_with(shared), _engine_with(shared)
    _answered(other, 0.05, 2)
    before = other.stats.timeout
    _late_answer(victim)  # the victim proves one of its timeouts spurious
    assert victim.stats.spurious_timeouts == 1 and shared.timeouts.scale == 2
    assert other.stats.timeout == pytest.approx(2 * before)


def test_a_first_request_waits_while_the_fleet_receives_blocks() -> None:
    """Before its first sample a device cannot tell a busy service from a lost request; its fleet can. While other
    devices keep receiving blocks its first request does not time out (up to max_timeout after it was sent); a
    device alone, or a fleet that went quiet, times out as before."""
    shared = SharedRtt()
    newcomer, busy, alone = _engine_with(shared), _engine_with(shared), _engine_with(None)
    for engine in (newcomer, busy, alone):
        engine.start(0.0)
        engine.next_actions()
    now = 0.0
    for index in range(5):  # the busy device gets a block every 0.5 s for 2.5 s
        now += 0.5
        busy.receive_block(_small(index), now)
        busy.next_actions()
        for engine in (newcomer, alone):
            engine.handle_timer(now)
            engine.next_actions()
    assert alone.stats.timeouts >= 1  # 1 s initial timeout, nothing else to go by
    assert newcomer.stats.timeouts == 0  # the service is alive: its first request keeps waiting
    timer = newcomer.get_timer()
    assert timer is not None and timer == pytest.approx(now + 1.0)  # the fleet's last block + the initial timeout
    newcomer.handle_timer(timer)  # the fleet went quiet: now it is a timeout
    assert newcomer.stats.timeouts == 1


def test_a_first_request_waits_for_the_fleet_at_most_max_timeout() -> None:
    shared = SharedRtt()
    newcomer, busy = _engine_with(shared, max_timeout=3.0), _engine_with(shared)
    for engine in (newcomer, busy):
        engine.start(0.0)
        engine.next_actions()
    now, index = 0.0, 0
    while now < 3.2:  # the fleet never goes quiet
        now += 0.4
        busy.receive_block(_small(index % 8), now)
        busy.next_actions()
        index += 1
        newcomer.handle_timer(now)
        newcomer.next_actions()
    assert newcomer.stats.timeouts == 1  # at 3 s after it was sent, whatever the fleet does
